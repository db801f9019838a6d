//! The reference challenge vectors of tests/data/challenge_vectors.rs (shared with the
//! parser's unit tests).

pub const CHALLENGES: &[(&str, Option<&str>)] = include!("../../data/challenge_vectors.rs");
