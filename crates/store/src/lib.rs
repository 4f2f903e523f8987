//! fedcare-store
