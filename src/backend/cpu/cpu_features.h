#pragma once
// Run-time choice of the CPU kernels' instruction set: AVX-512 VNNI (VPDPBUSD: 64 byte products per
// instruction into int32) where the CPU has it, unless ATOM_CPU_ISA=avx2; AVX2 otherwise, the build's
// baseline. Every choice gives the same bits (integer dot products are exact); tests switch it to cover both
// paths.
namespace atom::cpu {

bool cpu_has_avx512_vnni();  // cpuid: avx512f, bw, vl and vnni
bool avx512_vnni_enabled();  // what the kernels use now
// Process-wide; stays off without CPU support. Affects kernels chosen afterwards: Atom weights pick their
// layout when prepared (AtomLinear construction), the int8 lm_head at each forward.
void set_avx512_vnni_enabled(bool on);

}  // namespace atom::cpu
