"""The speed layer, lowest of the subpackages: what makes a CPU run fast and measures it. The prompt's shared prefix
(`prefix`), bf16 products through fp32 (`cpu_bf16`), 4-bit weights dequantized once per evaluation (`dequant`), torch
thread counts shared between runs (`threads`), and memory and throughput probes (`efficiency`). Imports only the
top-level modules (errors, locations)."""
