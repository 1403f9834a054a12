//! Test support: the API spec validator and the fake Firecracker and jailer.

pub mod fake_fc;
pub mod validator;
