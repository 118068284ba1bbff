//! The `exo` binary; its commands arrive with the engine and the node.
fn main() {
    println!("exo {}", env!("CARGO_PKG_VERSION"));
}
