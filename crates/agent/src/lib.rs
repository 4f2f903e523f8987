//! fedcare-agent
