/* Helpers for the hand-written hvt test guests: hypercalls and the two Solo5 notes.
 * The guests run in ring 0, 64-bit, with the tender's identity map; RDI holds the boot info. */

#define HC_WALLTIME 1
#define HC_PUTS 2
#define HC_POLL 3
#define HC_BLOCK_WRITE 4
#define HC_BLOCK_READ 5
#define HC_NET_WRITE 6
#define HC_NET_READ 7
#define HC_HALT 8

#define MFT_BLOCK 1
#define MFT_NET 2
#define MFT_RESERVED_FIRST (1 << 30)

/* hypercall nr, struct: outl the struct's address to port 0x500 + nr. */
.macro HYPERCALL nr, arg
    mov $\arg, %eax
    mov $(0x500 + \nr), %dx
    outl %eax, %dx
.endm

/* The ABI note: hvt (target 1), version 2. */
.macro ABI_NOTE
    .pushsection .note.solo5.abi, "a", @note
    .p2align 2
    .long 6, 16, 0x31494241
    .asciz "Solo5"
    .byte 0, 0
    .long 1, 2, 0, 0
    .popsection
.endm

/* Manifest note header for `n` entries (entry 0 included); follow with MFT_FIRST and entries. */
.macro MFT_BEGIN n
    .pushsection .note.solo5.manifest, "a", @note
    .p2align 2
    .long 6, (4 + 8 + 104 * \n), 0x3154464d
    .asciz "Solo5"
    .byte 0, 0
    .long 0           /* pad */
    .long 1, \n       /* version, entries */
    /* entry 0: RESERVED_FIRST, empty name */
    .space 68
    .long MFT_RESERVED_FIRST
    .space 16
    .quad 0
    .byte 0
    .space 7
.endm

.macro MFT_ENTRY name, type
9:  .ascii "\name"
    .space 68 - (. - 9b)
    .long \type
    .space 16
    .quad 0
    .byte 0
    .space 7
.endm

.macro MFT_END
    .popsection
.endm

/* A manifest without devices. */
.macro MFT_EMPTY
    MFT_BEGIN 1
    MFT_END
.endm
