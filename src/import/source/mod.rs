//! Sources of image bytes.

pub mod http;
