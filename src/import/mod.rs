//! The CVI controller and the one-pass import pipeline: a source produces a byte stream; the
//! stages meter, hash, inspect and store it in DVCR in the same pass.

pub mod checkpoint;
pub mod controller;
pub mod decide;
pub mod digest;
pub mod inspect;
pub mod pace;
pub mod pipeline;
pub mod progress;
pub mod resume;
pub mod source;
pub mod spool;
pub mod status;
