/* Writes into its own text, which the host mapped read-only. */
#include "hvt.h"

    .text
    .globl _start
_start:
    movb $0x90, target
target:
    nop
1:  jmp 1b

ABI_NOTE
MFT_EMPTY
