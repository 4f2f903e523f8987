//! fedcare-sim
