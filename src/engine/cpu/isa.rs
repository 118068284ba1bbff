//! Which SIMD instructions the kernels use, chosen once at run time.
//!
//! The binary may be built portable (`-C target-cpu=x86-64-v3`) or native; either way the
//! kernels check the CPU they run on and take the widest path it has. Tests run every path
//! the machine offers against the portable one, through [`Isa::available`].

use std::sync::OnceLock;

/// An instruction-set path of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust (the compiler vectorizes what it can: NEON on ARM, SSE on old x86).
    Portable,
    /// x86-64 AVX2 + FMA + F16C: 256-bit vectors, `vpmaddwd` for 16-bit dot products.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI: 512-bit vectors, `vpdpwssd`.
    Avx512Vnni,
}

impl Isa {
    /// The best path this CPU has (or the one `EXO_CPU_ISA` names, for comparisons).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let detected = Self::available().last().copied().unwrap_or(Isa::Portable);
            match std::env::var("EXO_CPU_ISA").ok().as_deref() {
                Some("portable") => Isa::Portable,
                Some("avx2") if Self::available().contains(&Isa::Avx2) => Isa::Avx2,
                _ => detected,
            }
        })
    }

    /// Every path this CPU can run, narrowest first.
    pub fn available() -> Vec<Isa> {
        let mut paths = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                paths.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    paths.push(Isa::Avx512Vnni);
                }
            }
        }
        paths
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}
