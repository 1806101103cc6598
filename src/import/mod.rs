//! The CVI controller and the one-pass import pipeline: a source produces a byte stream; the
//! stages meter, hash, inspect and store it in DVCR in the same pass.

pub mod inspect;
pub mod source;
