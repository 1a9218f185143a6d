//! `bare-pingora-system-alloc`: `bare-pingora` on the C library's allocator instead of mimalloc,
//! so that the bench can weigh the allocator choice (see `bare.rs`).

#[path = "../bare.rs"]
mod bare;

fn main() {
    bare::main()
}
