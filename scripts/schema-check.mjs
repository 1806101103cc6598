// Used by scripts/schema-check: validates every YAML document of each file with ajv.
import Ajv2020 from "ajv/dist/2020.js";
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
const [schemaPath, ...files] = process.argv.slice(2);
const ajv = new Ajv2020({ allErrors: true });
const validate = ajv.compile(JSON.parse(readFileSync(schemaPath, "utf8")));
for (const file of files) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  const problems = [];
  for (const doc of docs) {
    if (doc.errors.length) { problems.push(...doc.errors.map(e => e.message)); continue; }
    let value;
    try { value = doc.toJS(); } catch (error) { problems.push(error.message); continue; }
    if (!validate(value)) problems.push(...validate.errors.map(e => `${e.instancePath} ${e.message}`));
  }
  console.log(JSON.stringify({ file, problems }));
}
