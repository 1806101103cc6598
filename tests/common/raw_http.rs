//! The request corpora (`tests/corpus/webhooks`, `tests/corpus/uploads`) as bytes on the
//! wire, and one exchange per fresh connection.
//!
//! A `.http` case is a head with `\n` line ends (sent as CRLF), a blank line and the body; a
//! `.raw` case is sent byte for byte. The body may be exactly `{file:NAME}` (the bytes of
//! `tests/corpus/images/NAME`) or `{chunked-file:NAME}` (the same, chunked). In the head,
//! `{length}` is the body's length, the `{hmac…}` words its HMAC-SHA256 under a key, and
//! every other word comes from the caller.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The case's bytes, its placeholders filled from `words`; `hmac_key` signs the body.
pub fn request(case: &Path, words: &[(&str, &str)], hmac_key: Option<&[u8]>) -> Vec<u8> {
    let text = std::fs::read(case).unwrap();
    if case.extension().is_some_and(|ext| ext == "raw") {
        return text;
    }
    let text = String::from_utf8(text).unwrap();
    let (head, body) = text.split_once("\n\n").expect("a head and a body");
    let body = body.strip_suffix('\n').unwrap_or(body);
    let images = super::repo_root().join("tests/corpus/images");
    let body = if let Some(name) = file_word(body, "file") {
        std::fs::read(images.join(name)).unwrap()
    } else if let Some(name) = file_word(body, "chunked-file") {
        chunked(&std::fs::read(images.join(name)).unwrap())
    } else {
        body.as_bytes().to_vec()
    };
    let mut head = head.replace("{length}", &body.len().to_string());
    if let Some(key) = hmac_key {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
        let hmac = hex::encode(aws_lc_rs::hmac::sign(&key, &body).as_ref());
        head = head
            .replace("{hmac-half}", &hmac[..32])
            .replace("{hmac}", &hmac)
            .replace("{HMAC}", &hmac.to_uppercase());
    }
    // Longest first, so that `{catalog}` does not eat into `{catalog-off}`.
    let mut words = words.to_vec();
    words.sort_by_key(|(word, _)| std::cmp::Reverse(word.len()));
    for (word, value) in words {
        head = head.replace(&format!("{{{word}}}"), value);
    }
    assert!(
        !head.contains('{'),
        "an unfilled placeholder in {case:?}: {head}"
    );
    let mut bytes = format!("{}\r\n\r\n", head.replace('\n', "\r\n")).into_bytes();
    bytes.extend(body);
    bytes
}

fn file_word<'a>(body: &'a str, kind: &str) -> Option<&'a str> {
    body.strip_prefix(&format!("{{{kind}:"))?.strip_suffix('}')
}

fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(4096) {
        out.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        out.extend(chunk);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n\r\n");
    out
}

/// Writes `request` on a new connection to `address` and reads until the server closes it
/// (waiting far longer than any server limit, so only the server ends the wait): the answer.
pub fn exchange(address: &str, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // A server that answers before reading the whole body may close early: its answer is
    // still there to read.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("{address} kept the connection open for 60 s: {answer:?}")
        }
        // A reset after the answer (the server closed with unread bytes) keeps the answer.
        _ => String::from_utf8_lossy(&answer).into_owned(),
    }
}

/// The status code of an answer, or "no answer".
pub fn status(answer: &str) -> &str {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or("no answer")
}

/// The body of an answer.
pub fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// The cases of a corpus folder, sorted, and its `expect` lines as (case, answer).
pub fn corpus(dir: &Path) -> (Vec<std::path::PathBuf>, Vec<(String, String)>) {
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "http" || ext == "raw")
        })
        .collect();
    cases.sort();
    let expected: Vec<(String, String)> = std::fs::read_to_string(dir.join("expect"))
        .unwrap()
        .lines()
        .map(|line| {
            let (case, answer) = line.split_once(": ").unwrap_or((line, ""));
            (case.to_string(), answer.to_string())
        })
        .collect();
    assert_eq!(
        cases.len(),
        expected.len(),
        "one expected answer per case in {dir:?}"
    );
    (cases, expected)
}

/// A case's name: its file name without the extension.
pub fn case_name(case: &Path) -> String {
    case.file_stem().unwrap().to_string_lossy().into_owned()
}
