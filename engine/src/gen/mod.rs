//! Traffic generator (being written).
