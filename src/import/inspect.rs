//! Format detection and safety checks on the received bytes (being written).
