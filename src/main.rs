fn main() { unsafe { cktrace::ffi::llama_backend_init(); } println!("ok"); }
