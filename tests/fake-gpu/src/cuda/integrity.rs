//! The answer of the driver's integrity-check entry (export table `d4082055-…`, slot 1), which
//! NVIDIA's runtime calls at start-up and compares with its own computation.
//!
//! As documented by public reimplementations of the driver (ZLUDA's `dark_api`): for a
//! `version` ending in 0 or 1 the answer is a constant pair; otherwise it is HMAC-MD2
//! (RFC 2104 over RFC 1319, with MD2's 16-byte block) under a fixed 16-byte key, of this
//! message, in the machine's byte order:
//!
//! | bytes | what |
//! |---|---|
//! | 4 | the driver's CUDA version (`cuDriverGetVersion`) |
//! | 4 | `version`, as passed |
//! | 4 | `getpid()` |
//! | 4 | `pthread_self()`, its low 32 bits |
//! | 8 | the address of the runtime-interface table |
//! | 8 | the address of the integrity-check table |
//! | 8 | the address of the integrity-check function |
//! | 8 | `unix_seconds`, as passed |
//! | 28 per device | its UUID (16 bytes), PCI domain, bus and device (`int` each), for every device in order |

/// The answer for versions ending in 0 and 1.
const CONSTANT: [[u64; 2]; 2] =
    [[0x3341_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8], [0x1841_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8]];

/// The HMAC key.
const KEY: [u8; 16] = [0x14, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52, 0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5, 0x5A, 0x9F];

/// What goes into the hash besides the devices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs {
    pub driver_version: u32,
    pub version: u32,
    pub pid: u32,
    pub thread: u32,
    pub runtime_table: usize,
    pub integrity_table: usize,
    pub function: usize,
    pub unix_seconds: u64,
}

/// One device's part of the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceInfo {
    pub uuid: [u8; 16],
    pub pci_domain: i32,
    pub pci_bus: i32,
    pub pci_device: i32,
}

/// The two 64-bit words the integrity check writes.
pub(crate) fn answer(inputs: &Inputs, devices: &[DeviceInfo]) -> [u64; 2] {
    match inputs.version % 10 {
        0 => return CONSTANT[0],
        1 => return CONSTANT[1],
        _ => {}
    }
    let mut message = Vec::with_capacity(48 + 28 * devices.len());
    for word in [inputs.driver_version, inputs.version, inputs.pid, inputs.thread] {
        message.extend_from_slice(&word.to_ne_bytes());
    }
    for address in [inputs.runtime_table, inputs.integrity_table, inputs.function] {
        message.extend_from_slice(&(address as u64).to_ne_bytes());
    }
    message.extend_from_slice(&inputs.unix_seconds.to_ne_bytes());
    for d in devices {
        message.extend_from_slice(&d.uuid);
        for v in [d.pci_domain, d.pci_bus, d.pci_device] {
            message.extend_from_slice(&v.to_ne_bytes());
        }
    }
    let mac = hmac_md2(&KEY, &message);
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
    [word(&mac[..8]), word(&mac[8..])]
}

/// HMAC (RFC 2104) with MD2, whose block is 16 bytes: the key is exactly one block.
fn hmac_md2(key: &[u8; 16], message: &[u8]) -> [u8; 16] {
    let pad = |byte: u8| key.map(|k| k ^ byte);
    let mut inner = Md2::default();
    inner.update(&pad(0x36));
    inner.update(message);
    let inner = inner.finish();
    let mut outer = Md2::default();
    outer.update(&pad(0x5c));
    outer.update(&inner);
    outer.finish()
}

/// MD2's substitution table, from the digits of pi (RFC 1319).
const S: [u8; 256] = [
    41, 46, 67, 201, 162, 216, 124, 1, 61, 54, 84, 161, 236, 240, 6, 19, 98, 167, 5, 243, 192, 199, 115, 140, 152, 147,
    43, 217, 188, 76, 130, 202, 30, 155, 87, 60, 253, 212, 224, 22, 103, 66, 111, 24, 138, 23, 229, 18, 190, 78, 196,
    214, 218, 158, 222, 73, 160, 251, 245, 142, 187, 47, 238, 122, 169, 104, 121, 145, 21, 178, 7, 63, 148, 194, 16,
    137, 11, 34, 95, 33, 128, 127, 93, 154, 90, 144, 50, 39, 53, 62, 204, 231, 191, 247, 151, 3, 255, 25, 48, 179, 72,
    165, 181, 209, 215, 94, 146, 42, 172, 86, 170, 198, 79, 184, 56, 210, 150, 164, 125, 182, 118, 252, 107, 226, 156,
    116, 4, 241, 69, 157, 112, 89, 100, 113, 135, 32, 134, 91, 207, 101, 230, 45, 168, 2, 27, 96, 37, 173, 174, 176,
    185, 246, 28, 70, 97, 105, 52, 64, 126, 15, 85, 71, 163, 35, 221, 81, 175, 58, 195, 92, 249, 206, 186, 197, 234,
    38, 44, 83, 13, 110, 133, 40, 132, 9, 211, 223, 205, 244, 65, 129, 77, 82, 106, 220, 55, 200, 108, 193, 171, 250,
    36, 225, 123, 8, 12, 189, 177, 74, 120, 136, 149, 139, 227, 99, 232, 109, 233, 203, 213, 254, 59, 0, 29, 57, 242,
    239, 183, 14, 102, 88, 208, 228, 166, 119, 114, 248, 235, 117, 75, 10, 49, 68, 80, 180, 143, 237, 31, 26, 219, 153,
    141, 51, 159, 17, 131, 20,
];

/// MD2 (RFC 1319), streaming.
#[derive(Debug, Default)]
struct Md2 {
    state: [u8; 16],
    checksum: [u8; 16],
    block: [u8; 16],
    filled: usize,
}

impl Md2 {
    fn update(&mut self, data: &[u8]) {
        for &byte in data {
            self.block[self.filled] = byte;
            self.filled += 1;
            if self.filled == 16 {
                self.compress();
                self.filled = 0;
            }
        }
    }

    fn compress(&mut self) {
        let mut last = self.checksum[15];
        for (c, &m) in self.checksum.iter_mut().zip(&self.block) {
            *c ^= S[usize::from(m ^ last)];
            last = *c;
        }
        let mut x = [0u8; 48];
        for j in 0..16 {
            x[j] = self.state[j];
            x[16 + j] = self.block[j];
            x[32 + j] = self.block[j] ^ self.state[j];
        }
        let mut t = 0u8;
        for round in 0..18u8 {
            for b in &mut x {
                *b ^= S[usize::from(t)];
                t = *b;
            }
            t = t.wrapping_add(round);
        }
        self.state.copy_from_slice(&x[..16]);
    }

    fn finish(mut self) -> [u8; 16] {
        let pad = 16 - self.filled;
        self.update(&vec![pad as u8; pad]);
        let checksum = self.checksum;
        self.update(&checksum);
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md2(data: &[u8]) -> String {
        let mut h = Md2::default();
        h.update(data);
        h.finish().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md2_matches_rfc_1319() {
        assert_eq!(md2(b""), "8350e5a3e24c153df2275c9f80692773");
        assert_eq!(md2(b"a"), "32ec01ec4a6dac72c0ab96fb34c0b5d1");
        assert_eq!(md2(b"abc"), "da853b0d3f88d99b30283a69e6ded6bb");
        assert_eq!(md2(b"message digest"), "ab4f496bfb2a530b219ff33031fe06b0");
        assert_eq!(md2(b"abcdefghijklmnopqrstuvwxyz"), "4e8ddff3650292ab5a4108c3aa47940b");
        assert_eq!(
            md2(b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
            "d5976f79d83d3a0dc9806c3c66f3efd8"
        );
    }

    /// Inputs and answer seen in a run where NVIDIA's runtime 13.0.96 accepted the answer (it
    /// fails `cudaGetDeviceCount` with `cudaErrorSoftwareValidityNotEstablished` otherwise).
    #[test]
    fn a_known_answer_the_runtime_accepted() {
        let inputs = Inputs {
            driver_version: 13000,
            version: 13002,
            pid: 26306,
            thread: 96_718_848,
            runtime_table: 140_681_742_757_384,
            integrity_table: 140_681_742_757_360,
            function: 140_681_740_587_456,
            unix_seconds: 1_796_306_062,
        };
        let uuid = |a: u8, b: u8, c: u8, d: u8, e: u8| [a, a, a, a, b, b, c, c, d, d, e, e, e, e, e, e];
        let devices = [
            DeviceInfo { uuid: uuid(0x11, 0x22, 0x33, 0x44, 0x55), pci_domain: 0, pci_bus: 1, pci_device: 0 },
            DeviceInfo { uuid: uuid(0x66, 0x77, 0x88, 0x99, 0xaa), pci_domain: 0, pci_bus: 2, pci_device: 0 },
        ];
        assert_eq!(answer(&inputs, &devices), [0xf2ba_e435_7924_8c03, 0x90b8_de89_8278_b633]);
    }

    #[test]
    fn versions_ending_in_0_and_1_answer_constants() {
        let inputs = Inputs {
            driver_version: 13000,
            version: 12090,
            pid: 1,
            thread: 2,
            runtime_table: 3,
            integrity_table: 4,
            function: 5,
            unix_seconds: 6,
        };
        assert_eq!(answer(&inputs, &[]), CONSTANT[0]);
        assert_eq!(answer(&Inputs { version: 13051, ..inputs }, &[]), CONSTANT[1]);
        let hashed = answer(&Inputs { version: 12092, ..inputs }, &[]);
        assert_ne!(hashed, answer(&Inputs { version: 12092, pid: 7, ..inputs }, &[]));
        let device = DeviceInfo { uuid: [1; 16], pci_domain: 0, pci_bus: 1, pci_device: 0 };
        assert_ne!(hashed, answer(&Inputs { version: 12092, ..inputs }, &[device]));
    }
}
