//! fedcare-server
