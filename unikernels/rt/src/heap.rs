//! The heap: between the end of the image and the stack at the top of memory.
//!
//! Power-of-two size classes with a free list each, carved from a bump pointer. Small, O(1),
//! no fragmentation bookkeeping; a network service allocates a few buffer sizes over and over,
//! which this serves well. Memory is never returned to the bump area, and the bump area is
//! known to be zero (the tender zeroes guest memory), which `alloc_zeroed` relies on.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;

use crate::sync::Global;

const MIN_CLASS: u32 = 4; // 16 bytes: room for the free-list link
const CLASSES: usize = 48;

struct Heap {
    next: u64,
    end: u64,
    free: [u64; CLASSES],
}

static HEAP: Global<Heap> = Global::new(Heap {
    next: 0,
    end: 0,
    free: [0; CLASSES],
});

pub(crate) fn init(start: u64, end: u64) {
    HEAP.with(|h| {
        h.next = start;
        h.end = end.max(start);
    });
}

/// Bytes never handed out yet (free lists not counted).
pub fn unused() -> u64 {
    HEAP.with(|h| h.end - h.next)
}

fn class_of(layout: Layout) -> Option<u32> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS);
    let class = size.checked_next_power_of_two()?.trailing_zeros();
    ((class as usize) < CLASSES).then_some(class)
}

struct Allocator;

// SAFETY: blocks of one class never overlap (bump carving), each is aligned to its size up to
// 4 KiB and to the layout's alignment above that, and a freed block goes back to its own class.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return null_mut();
        };
        HEAP.with(|h| {
            let head = h.free[class as usize];
            if head != 0 {
                // SAFETY: `head` is a freed block of this class; its first word is the link.
                h.free[class as usize] = unsafe { *(head as *const u64) };
                return head as *mut u8;
            }
            let size = 1u64 << class;
            let align = size.min(4096).max(layout.align() as u64);
            let start = (h.next + align - 1) & !(align - 1);
            match start.checked_add(size) {
                Some(end) if end <= h.end => {
                    h.next = end;
                    start as *mut u8
                }
                _ => null_mut(),
            }
        })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return null_mut();
        };
        let recycled = HEAP.with(|h| h.free[class as usize] != 0);
        // SAFETY: the caller's contract for `alloc` is the same as ours.
        let ptr = unsafe { self.alloc(layout) };
        // Memory fresh from the bump area is still as the tender handed it over: zero. Not
        // writing it keeps untouched pages (say of an idle connection's buffers) from ever
        // costing the host a page.
        if recycled && !ptr.is_null() {
            // SAFETY: `ptr` is a block of at least `layout.size()` bytes we just allocated.
            unsafe { core::ptr::write_bytes(ptr, 0, layout.size()) };
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            return;
        };
        HEAP.with(|h| {
            // SAFETY: `ptr` came from `alloc` with this layout, so it is a whole block of
            // `class`, at least 16 bytes and 8-aligned, and no longer used by its owner.
            unsafe { *ptr.cast::<u64>() = h.free[class as usize] };
            h.free[class as usize] = ptr as u64;
        })
    }
}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;
