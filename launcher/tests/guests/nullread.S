/* Reads address 0, which the tender's page tables leave unmapped: a page fault with no IDT,
 * hence a triple fault. */
#include "hvt.h"

    .text
    .globl _start
_start:
    movq 0x0, %rax
1:  jmp 1b

ABI_NOTE
MFT_EMPTY
