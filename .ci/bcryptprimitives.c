/* Wine 8 has no bcryptprimitives.dll, but Rust's std (1.78 and later) takes its randomness from
 * ProcessPrng in that DLL, so every Rust program exits at load time. This stand-in, placed
 * beside the .exe, answers ProcessPrng from advapi32's RtlGenRandom (exported as
 * SystemFunction036), which Wine has. Only the Windows CI under Wine uses it; real Windows
 * (10 and later) ships the DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a ULONG length: feed larger requests in pieces. */
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
