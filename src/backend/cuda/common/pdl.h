#pragma once
// Host-side switch of programmatic dependent launch (launch.cuh says what it is and what a kernel owes it).

namespace atom::cuda {

// Whether launches that ask for PDL get it: ATOM_PDL=1 and the current device is sm_90 or newer. Off by
// default until the chain has been validated and timed on a GPU (ATOM_PDL is the switch for measuring what it
// gains). The environment is read at the first launch.
bool pdl_enabled();
// Overrides ATOM_PDL for the launches that follow (tests compare the chain with and without PDL).
void set_pdl_enabled(bool enabled);

}  // namespace atom::cuda
