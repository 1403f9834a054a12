//! Test support: the API spec validator and the fake Firecracker and jailer (also included
//! by bandsox-core's Firecracker manager test).

#![allow(dead_code)]

pub mod fake_fc;
pub mod validator;
