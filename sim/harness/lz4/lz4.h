/* The two LZ4 functions Verilator's FST writer calls, declared as liblz4 exports them (its
 * stable ABI), for machines that have the liblz4 runtime library but not its headers.
 * sim/top_harness.py links the library it finds. */
#ifndef LLMACC_LZ4_SHIM_H
#define LLMACC_LZ4_SHIM_H
#ifdef __cplusplus
extern "C" {
#endif
int LZ4_compressBound(int inputSize);
int LZ4_compress_default(const char* src, char* dst, int srcSize, int dstCapacity);
#ifdef __cplusplus
}
#endif
#endif
