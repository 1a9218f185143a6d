//! `bare-pingora`: Pingora alone, on the allocator Gatehouse uses (see `bare.rs`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../bare.rs"]
mod bare;

fn main() {
    bare::main()
}
