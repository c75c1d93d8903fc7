//! Rebuilds when a console file is added or removed: rust-embed includes the files of
//! src/console/web at compile time, and a file that is new is otherwise not noticed.
fn main() {
    println!("cargo:rerun-if-changed=src/console/web");
}
