//! The sharded inference engine: the real default model, generated models of every
//! format, and bad input.

#[path = "../support/mod.rs"]
mod support;

mod agreement;
mod bad_input;
mod batcher;
mod cache;
mod families;
mod group_link;
mod kernels;
mod prefix;
mod real_model;
mod replay;
mod steps;
mod synthetic;
mod tensor;
mod text;
