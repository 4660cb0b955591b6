/* Writes to a port that is no hypercall. */
#include "hvt.h"

    .text
    .globl _start
_start:
    mov $0x1234, %eax
    mov $0x600, %dx
    outl %eax, %dx
1:  jmp 1b

ABI_NOTE
MFT_EMPTY
