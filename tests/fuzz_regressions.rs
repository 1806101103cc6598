//! Every input a fuzz target once crashed on (fuzz/regressions/<target>/), replayed on the
//! stable toolchain: a fixed bug stays fixed. `scripts/fuzz` runs the targets themselves.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("inspect", image_catalog::fuzzing::inspect),
    ("tar", image_catalog::fuzzing::tar),
    ("http_headers", image_catalog::fuzzing::http_headers),
    ("retry_after", image_catalog::fuzzing::retry_after),
    ("known_hosts", image_catalog::fuzzing::known_hosts),
    ("catalog", image_catalog::fuzzing::catalog),
    ("cron", image_catalog::fuzzing::cron),
];

#[test]
fn every_input_a_fuzz_target_crashed_on_passes_now() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| target(&input)).is_err() {
                panic!("{name}: {} crashes again", path.display());
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} inputs");
}

#[test]
fn every_fuzz_target_has_an_entry_here() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap();
    let declared: Vec<&str> = manifest
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .filter(|name| *name != "image-catalog-fuzz")
        .collect();
    let replayed: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(declared, replayed);
}
