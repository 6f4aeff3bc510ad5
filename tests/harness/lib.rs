//! Test harness shared by gmemd's integration and end-to-end tests.
