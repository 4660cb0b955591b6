//! A panic prints its message and location and halts with 255 (abort).

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("panic: {}", info);
    crate::halt(crate::abi::exit::ABORT)
}
