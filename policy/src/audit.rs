//! The hash-chained audit trail (being written).
