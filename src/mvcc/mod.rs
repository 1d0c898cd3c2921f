//! MVCC store (placeholder, being written).
