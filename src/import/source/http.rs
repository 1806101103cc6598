//! HTTP/HTTPS source (being written).
