//! Test support: the API spec validator, the fake Firecracker and jailer with the real
//! binaries' command-line grammar, and a fake cgroup host (also included by bandsox-core's
//! Firecracker manager test).

#![allow(dead_code)]

pub mod fake_args;
pub mod fake_fc;
pub mod fake_jailer;
pub mod validator;
