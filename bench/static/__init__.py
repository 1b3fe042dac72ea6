"""The offline sm_90 analyser: compiler facts and ESTIMATED speed of the fused kernels, no GPU."""
