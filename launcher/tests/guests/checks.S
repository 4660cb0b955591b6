/* Exercises the small hypercalls and their argument checks; halts with 0 when every check
 * passes, else with the number of the first check that failed. */
#include "hvt.h"

    .text
    .globl _start
_start:
    /* 1: WALLTIME is after 2020-01-01 (1.577e18 ns). */
    HYPERCALL HC_WALLTIME, wt_req
    movabs $1577836800000000000, %rax
    cmp %rax, wt_req
    mov $1, %ebx
    jb fail

    /* 2: POLL with timeout 0 and no net device returns at once with ret 0, ready_set 0. */
    HYPERCALL HC_POLL, poll_req
    mov $2, %ebx
    cmpl $0, poll_req + 16
    jne fail
    cmpq $0, poll_req + 8
    jne fail

    /* 3: BLOCK_READ on a handle that is no device: EINVAL. */
    HYPERCALL HC_BLOCK_READ, blk_req
    mov $3, %ebx
    cmpl $2, blk_req + 32
    jne fail

    /* 4: NET_READ on handle 0 (the reserved entry): EINVAL. */
    HYPERCALL HC_NET_READ, net_req
    mov $4, %ebx
    cmpl $2, net_req + 24
    jne fail

    /* 5: NET_WRITE on a huge handle: EINVAL. */
    HYPERCALL HC_NET_WRITE, netw_req
    mov $5, %ebx
    cmpl $2, netw_req + 24
    jne fail

    /* 6: the boot info: mem_size 16 MiB, cmdline "a b", kernel_end page aligned. */
    mov $6, %ebx
    cmpq $0x1000000, (%rdi)
    jne fail
    testq $0xfff, 8(%rdi)
    jnz fail
    mov 24(%rdi), %rsi
    cmpl $0x00622061, (%rsi)      /* "a b\0" */
    jne fail

    HYPERCALL HC_HALT, halt_req
1:  jmp 1b
fail:
    mov %ebx, halt_req + 8
    HYPERCALL HC_HALT, halt_req
2:  jmp 2b

    .data
    .p2align 3
wt_req:    .quad 0
poll_req:  .quad 0, 0x55
           .long 0x55, 0
blk_req:   .quad 7, 0, buf, 512
           .long 99, 0
net_req:   .quad 0, buf, 512
           .long 99, 0
netw_req:  .quad 0x7fffffff, buf, 60
           .long 99, 0
halt_req:  .quad 0
           .long 0, 0
buf:       .space 512

ABI_NOTE
MFT_EMPTY
