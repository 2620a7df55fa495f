"""The sandbox's seccomp filter: a classic-BPF program denying syscalls generated code never needs.

bwrap loads it (``--seccomp FD``) just before it executes the runner, so it binds every process
of the sandbox and cannot be removed. The program, run by the kernel on each syscall with the
``struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}`` as its input::

    arch != this machine's AUDIT_ARCH           -> kill (no i386/arm32 compat syscalls)
    nr has the x32 bit (x86_64)                  -> fail with ENOSYS
    nr in DENIED                                 -> fail with EPERM
    clone3                                       -> fail with ENOSYS (glibc falls back to clone)
    clone with a CLONE_NEW* flag in args[0]      -> fail with EPERM (no new namespaces)
    socket with a family other than AF_UNIX, AF_INET, AF_INET6 -> fail with EAFNOSUPPORT
    anything else                                -> allow

``args[0]`` is read as its low 32 bits (offset 16: both supported machines are little-endian);
the namespace flags and the socket family lie there.

Syscall numbers: x86_64 from the kernel's arch/x86/entry/syscalls/syscall_64.tbl (as installed
in /usr/include/x86_64-linux-gnu/asm/unistd_64.h), aarch64 from include/uapi/asm-generic/unistd.h
(/usr/include/asm-generic/unistd.h); the new-mount-API and io_uring calls share their numbers
(425-442) on both.
"""

from __future__ import annotations

import errno
import struct

# linux/filter.h and linux/seccomp.h
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data
_X32_SYSCALL_BIT = 0x40000000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME (linux/sched.h)
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
CLONE_NEW_FLAGS |= 0x20000000 | 0x40000000 | 0x00000080
SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6

# name: (x86_64, aarch64)
SYSCALLS: dict[str, tuple[int, int]] = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "unshare": (272, 97),
    "setns": (308, 268),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "personality": (135, 92),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
}
_FILTERED = {"clone": (56, 220), "clone3": (435, 435), "socket": (41, 198)}
DENIED = tuple(SYSCALLS)  # each fails with EPERM
MACHINES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column, AUDIT_ARCH_*


def syscall_number(name: str, machine: str) -> int:
    """The number of syscall ``name`` (one of `DENIED`, clone, clone3, socket) on ``machine``."""
    column = MACHINES[machine][0]
    return {**SYSCALLS, **_FILTERED}[name][column]


def filter_program(machine: str) -> bytes:
    """The filter for ``machine`` (x86_64 or aarch64) as bwrap reads it: an array of
    ``struct sock_filter {u16 code; u8 jt; u8 jf; u32 k;}`` in native byte order. Raises
    KeyError for another machine."""
    arch = MACHINES[machine][1]

    def nr(name: str) -> int:
        return syscall_number(name, machine)

    prog: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _NR),
    ]
    if machine == "x86_64":
        prog += [(_JGE_K, 0, 1, _X32_SYSCALL_BIT), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    for name in DENIED:
        prog += [(_JEQ_K, 0, 1, nr(name)), (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)]
    prog += [(_JEQ_K, 0, 1, nr("clone3")), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    prog += [
        (_JEQ_K, 0, 4, nr("clone")),
        (_LD_W_ABS, 0, 0, _ARG0),
        (_JSET_K, 0, 1, CLONE_NEW_FLAGS),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    unix, inet, inet6 = SOCKET_FAMILIES
    prog += [
        (_JEQ_K, 0, 6, nr("socket")),
        (_LD_W_ABS, 0, 0, _ARG0),
        (_JEQ_K, 3, 0, unix),
        (_JEQ_K, 2, 0, inet),
        (_JEQ_K, 1, 0, inet6),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EAFNOSUPPORT),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    prog.append((_RET_K, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)
