//! In-memory generator of hvt images, valid by default, with every header field reachable so a
//! test can break exactly one thing.
//!
//! `ImageBuilder::default().build()` gives an [`Elf`]: an R+X code segment at 1 MiB (a program
//! that calls HALT), optionally an RW data segment with bss after it, and the Solo5 ABI and
//! manifest notes, each in its own `PT_NOTE` segment. Tweak `ehdr`/`phdrs`/`body` of the [`Elf`],
//! then `to_bytes()`.

use summon_hvt_abi as abi;

pub const CODE_GPA: u64 = 0x10_0000;
pub const PAGE: u64 = 0x1000;
/// File offset of the code segment (page aligned, like a linker's output).
pub const CODE_OFFSET: u64 = 0x1000;

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const PT_GNU_STACK: u32 = 0x6474_e551;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// Every field of the ELF64 header.
#[derive(Clone, Debug)]
pub struct Ehdr {
    pub ident: [u8; 16],
    pub e_type: u16,
    pub e_machine: u16,
    pub e_version: u32,
    pub e_entry: u64,
    pub e_phoff: u64,
    pub e_shoff: u64,
    pub e_flags: u32,
    pub e_ehsize: u16,
    pub e_phentsize: u16,
    pub e_phnum: u16,
    pub e_shentsize: u16,
    pub e_shnum: u16,
    pub e_shstrndx: u16,
}

impl Ehdr {
    fn write(&self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.ident);
        put(out, 16, &self.e_type.to_le_bytes());
        put(out, 18, &self.e_machine.to_le_bytes());
        put(out, 20, &self.e_version.to_le_bytes());
        put(out, 24, &self.e_entry.to_le_bytes());
        put(out, 32, &self.e_phoff.to_le_bytes());
        put(out, 40, &self.e_shoff.to_le_bytes());
        put(out, 48, &self.e_flags.to_le_bytes());
        put(out, 52, &self.e_ehsize.to_le_bytes());
        put(out, 54, &self.e_phentsize.to_le_bytes());
        put(out, 56, &self.e_phnum.to_le_bytes());
        put(out, 58, &self.e_shentsize.to_le_bytes());
        put(out, 60, &self.e_shnum.to_le_bytes());
        put(out, 62, &self.e_shstrndx.to_le_bytes());
    }
}

/// Every field of an ELF64 program header.
#[derive(Clone, Debug, Default)]
pub struct Phdr {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

impl Phdr {
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.p_type.to_le_bytes());
        put(out, 4, &self.p_flags.to_le_bytes());
        put(out, 8, &self.p_offset.to_le_bytes());
        put(out, 16, &self.p_vaddr.to_le_bytes());
        put(out, 24, &self.p_paddr.to_le_bytes());
        put(out, 32, &self.p_filesz.to_le_bytes());
        put(out, 40, &self.p_memsz.to_le_bytes());
        put(out, 48, &self.p_align.to_le_bytes());
    }
}

/// An image as headers plus file body; `to_bytes` writes the headers over the body.
#[derive(Clone, Debug)]
pub struct Elf {
    pub ehdr: Ehdr,
    /// Written at `ehdr.e_phoff` whatever `ehdr.e_phnum` says.
    pub phdrs: Vec<Phdr>,
    /// The whole file; the header area is overwritten by `to_bytes`.
    pub body: Vec<u8>,
}

impl Elf {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body.clone();
        if out.len() < 64 {
            out.resize(64, 0);
        }
        self.ehdr.write(&mut out);
        if self.phdrs.is_empty() {
            return out;
        }
        let phoff = self.ehdr.e_phoff as usize;
        let end = phoff + 56 * self.phdrs.len();
        if out.len() < end {
            out.resize(end, 0);
        }
        for (i, ph) in self.phdrs.iter().enumerate() {
            ph.write(&mut out[phoff + 56 * i..]);
        }
        out
    }

    /// Index of the `n`th program header of type `p_type`.
    pub fn phdr_index(&self, p_type: u32, n: usize) -> usize {
        self.phdrs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.p_type == p_type)
            .nth(n)
            .map(|(i, _)| i)
            .expect("no such program header")
    }
}

/// What the default image holds; change a field, then `build()`.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    /// Loaded R+X at `code_gpa`.
    pub code: Vec<u8>,
    pub code_gpa: u64,
    /// `None`: `code_gpa`.
    pub entry: Option<u64>,
    /// RW segment on the page after the code, if any.
    pub data: Option<Vec<u8>>,
    /// Zeroed bytes after `data` (p_memsz - p_filesz of the data segment).
    pub bss: u64,
    /// Descriptor of the ABI note; `None` leaves the note out.
    pub abi_desc: Option<Vec<u8>>,
    /// Descriptor of the manifest note; `None` leaves the note out.
    pub mft_desc: Option<Vec<u8>>,
    /// Both notes in one `PT_NOTE` segment (ABI note first) instead of one each.
    pub notes_in_one_segment: bool,
    /// Notes of other owners put before the Solo5 ones, in the same segment(s).
    pub extra_notes: Vec<u8>,
    /// Add a `PT_GNU_STACK` header, as linkers do.
    pub gnu_stack: bool,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder {
            code: halt_program(CODE_GPA, 0),
            code_gpa: CODE_GPA,
            entry: None,
            data: None,
            bss: 0,
            abi_desc: Some(abi_desc(abi::ABI_TARGET_HVT, abi::ABI_VERSION)),
            mft_desc: Some(mft_desc(&[])),
            notes_in_one_segment: false,
            extra_notes: Vec::new(),
            gnu_stack: false,
        }
    }
}

impl ImageBuilder {
    /// The default image with these manifest devices (`(name, type)`, after entry 0).
    pub fn with_devices(devices: &[(&str, u32)]) -> Self {
        ImageBuilder {
            mft_desc: Some(mft_desc(devices)),
            ..Self::default()
        }
    }

    /// Guest address of the data segment: the page after the code.
    pub fn data_gpa(&self) -> u64 {
        self.code_gpa + round_up(self.code.len() as u64, PAGE)
    }

    /// The `kernel_end` the launcher should compute for this image.
    pub fn expected_kernel_end(&self) -> u64 {
        match &self.data {
            Some(d) => round_up(self.data_gpa() + d.len() as u64 + self.bss, PAGE),
            None => round_up(self.code_gpa + self.code.len() as u64, PAGE),
        }
    }

    pub fn build(&self) -> Elf {
        let mut phdrs = Vec::new();
        let mut body = vec![0u8; CODE_OFFSET as usize];
        let flags_rx = PF_R | PF_X;

        body.extend_from_slice(&self.code);
        phdrs.push(Phdr {
            p_type: PT_LOAD,
            p_flags: flags_rx,
            p_offset: CODE_OFFSET,
            p_vaddr: self.code_gpa,
            p_paddr: self.code_gpa,
            p_filesz: self.code.len() as u64,
            p_memsz: self.code.len() as u64,
            p_align: PAGE,
        });

        if let Some(data) = &self.data {
            pad_to(&mut body, PAGE);
            let gpa = self.data_gpa();
            phdrs.push(Phdr {
                p_type: PT_LOAD,
                p_flags: PF_R | PF_W,
                p_offset: body.len() as u64,
                p_vaddr: gpa,
                p_paddr: gpa,
                p_filesz: data.len() as u64,
                p_memsz: data.len() as u64 + self.bss,
                p_align: PAGE,
            });
            body.extend_from_slice(data);
        }

        let abi_note = self
            .abi_desc
            .as_ref()
            .map(|d| note(abi::NOTE_NAME, abi::NOTE_TYPE_ABI, d));
        let mft_note = self
            .mft_desc
            .as_ref()
            .map(|d| note(abi::NOTE_NAME, abi::NOTE_TYPE_MFT, d));
        let mut groups: Vec<Vec<u8>> = Vec::new();
        if self.notes_in_one_segment {
            let mut all = self.extra_notes.clone();
            all.extend(abi_note.into_iter().flatten());
            all.extend(mft_note.into_iter().flatten());
            groups.push(all);
        } else {
            let mut with_extra = |n: Option<Vec<u8>>| {
                if let Some(n) = n {
                    let mut g = self.extra_notes.clone();
                    g.extend_from_slice(&n);
                    groups.push(g);
                }
            };
            with_extra(abi_note);
            with_extra(mft_note);
        }
        for g in groups {
            pad_to(&mut body, 8);
            phdrs.push(Phdr {
                p_type: PT_NOTE,
                p_flags: PF_R,
                p_offset: body.len() as u64,
                p_filesz: g.len() as u64,
                p_memsz: 0,
                p_align: 8,
                ..Phdr::default()
            });
            body.extend_from_slice(&g);
        }
        if self.gnu_stack {
            phdrs.push(Phdr {
                p_type: PT_GNU_STACK,
                p_flags: PF_R | PF_W,
                p_align: 16,
                ..Phdr::default()
            });
        }

        let mut ident = [0u8; 16];
        ident[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        let ehdr = Ehdr {
            ident,
            e_type: 2,
            e_machine: 62,
            e_version: 1,
            e_entry: self.entry.unwrap_or(self.code_gpa),
            e_phoff: 64,
            e_shoff: 0,
            e_flags: 0,
            e_ehsize: 64,
            e_phentsize: 56,
            e_phnum: phdrs.len() as u16,
            e_shentsize: 64,
            e_shnum: 0,
            e_shstrndx: 0,
        };
        assert!(64 + 56 * phdrs.len() <= CODE_OFFSET as usize);
        Elf { ehdr, phdrs, body }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.build().to_bytes()
    }
}

/// One ELF note: header, name padded to 4, descriptor padded to 4.
pub fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    out.extend_from_slice(name);
    pad_to(&mut out, 4);
    out.extend_from_slice(desc);
    pad_to(&mut out, 4);
    out
}

/// The ABI note descriptor.
pub fn abi_desc(target: u32, version: u32) -> Vec<u8> {
    let mut d = Vec::new();
    for w in [target, version, 0, 0] {
        d.extend_from_slice(&w.to_le_bytes());
    }
    d
}

/// A manifest entry as raw file fields, so a test can put anything in them.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: [u8; abi::MFT_NAME_SIZE],
    pub kind: u32,
    pub attached: u8,
}

impl RawEntry {
    pub fn new(name: &str, kind: u32) -> Self {
        let mut n = [0u8; abi::MFT_NAME_SIZE];
        n[..name.len()].copy_from_slice(name.as_bytes());
        RawEntry {
            name: n,
            kind,
            attached: 0,
        }
    }

    /// Entry 0 as the Solo5 toolchain writes it.
    pub fn reserved_first() -> Self {
        Self::new("", abi::MFT_RESERVED_FIRST)
    }

    pub fn to_bytes(&self) -> [u8; 104] {
        let mut e = [0u8; 104];
        e[..abi::MFT_NAME_SIZE].copy_from_slice(&self.name);
        e[68..72].copy_from_slice(&self.kind.to_le_bytes());
        e[96] = self.attached;
        e
    }
}

/// A manifest note descriptor: 4 pad bytes, `struct mft` header, the entries as given.
pub fn mft_desc_raw(version: u32, declared_entries: u32, entries: &[RawEntry]) -> Vec<u8> {
    let mut d = vec![0u8; abi::MFT_NOTE_PAD];
    d.extend_from_slice(&version.to_le_bytes());
    d.extend_from_slice(&declared_entries.to_le_bytes());
    for e in entries {
        d.extend_from_slice(&e.to_bytes());
    }
    d
}

/// A valid manifest note descriptor: entry 0, then `devices`.
pub fn mft_desc(devices: &[(&str, u32)]) -> Vec<u8> {
    let mut entries = vec![RawEntry::reserved_first()];
    entries.extend(devices.iter().map(|(n, k)| RawEntry::new(n, *k)));
    mft_desc_raw(abi::MFT_VERSION, entries.len() as u32, &entries)
}

/// x86-64 code at `base`: HALT hypercall with `status`, then spin.
pub fn halt_program(base: u64, status: i32) -> Vec<u8> {
    puts_halt_program(base, b"", status)
}

/// x86-64 code at `base`: PUTS `msg` (skipped if empty), then HALT with `status`, then spin.
/// The hypercall argument structs sit right after the code, in the same (read-only) segment:
/// the tender only reads them.
pub fn puts_halt_program(base: u64, msg: &[u8], status: i32) -> Vec<u8> {
    // mov eax, imm32 ; mov dx, imm16 ; out dx, eax  = 10 bytes per call.
    fn call(code: &mut Vec<u8>, nr: u16, arg: u64) {
        code.push(0xb8);
        code.extend_from_slice(&(arg as u32).to_le_bytes());
        code.extend_from_slice(&[0x66, 0xba]);
        code.extend_from_slice(&(abi::HYPERCALL_PIO_BASE + nr).to_le_bytes());
        code.push(0xef);
    }
    let calls = if msg.is_empty() { 1 } else { 2 };
    let code_len = 10 * calls + 2; // + jmp $
    let puts_at = round_up(code_len as u64, 16);
    let halt_at = puts_at + if msg.is_empty() { 0 } else { 16 };
    let msg_at = halt_at + 16;

    let mut code = Vec::new();
    if !msg.is_empty() {
        call(&mut code, abi::nr::PUTS, base + puts_at);
    }
    call(&mut code, abi::nr::HALT, base + halt_at);
    code.extend_from_slice(&[0xeb, 0xfe]);
    code.resize(puts_at as usize, 0xcc);
    if !msg.is_empty() {
        code.extend_from_slice(&(base + msg_at).to_le_bytes());
        code.extend_from_slice(&(msg.len() as u64).to_le_bytes());
    }
    code.extend_from_slice(&0u64.to_le_bytes()); // HALT cookie
    code.extend_from_slice(&status.to_le_bytes());
    code.extend_from_slice(&[0; 4]);
    code.extend_from_slice(msg);
    code
}

pub fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn pad_to(v: &mut Vec<u8>, to: u64) {
    let n = round_up(v.len() as u64, to) as usize;
    v.resize(n, 0);
}

fn put(out: &mut [u8], off: usize, bytes: &[u8]) {
    out[off..off + bytes.len()].copy_from_slice(bytes);
}
