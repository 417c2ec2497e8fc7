// MMX and SSE..SSE4.2 against this machine's own CPU: one instruction sequence runs natively as
// a Linux program and as a guest on the interpreter, and every result (registers, memory
// stores, RFLAGS, MXCSR after each operation) must be identical. The inputs are edge values
// (±0, smallest denormals, ±inf, QNaN, SNaN, the float/double/int32 limits, values at
// rounding boundaries) under four MXCSR settings (nearest; down + DAZ; up + FTZ; truncate).
// Further tests check fault rules and save-area layouts against constants from the SDM.
import Foundation
import GuestMemory
import KVM
import Machine
import Testing
import X86

private let body = #"""

    ; SSE results for every pair of test vectors under four MXCSR settings, into [results].
    ; r14 = output pointer; rsi/rdi = the two vectors; r12/r13 = their indices; rbp = mode index.
    %macro RECX 1
            movdqu [r14], %1
            add r14, 16
    %endmacro
    %macro RECQ 1
            mov [r14], %1
            add r14, 8
    %endmacro
    %macro RECM 0
            stmxcsr [r14]
            mov dword [r14 + 4], 0
            add r14, 8
            ldmxcsr [mode]
    %endmacro
    %macro LOADAB 0
            movdqa xmm1, [rsi]
            movdqa xmm2, [rdi]
    %endmacro
    %macro LENGTHS 0
            lea eax, [r12 * 5 - 7]
            lea edx, [r13 * 3 - 9]
    %endmacro
    %macro OP2 1
            LOADAB
            %1 xmm1, xmm2
            RECX xmm1
            RECM
    %endmacro
    %macro OPM 1
            LOADAB
            %1 xmm1, [rdi]
            RECX xmm1
            RECM
    %endmacro
    %macro OPM3 2
            LOADAB
            %1 xmm1, [rdi], %2
            RECX xmm1
            RECM
    %endmacro
    %macro OP3 2
            LOADAB
            LENGTHS
            %1 xmm1, xmm2, %2
            RECX xmm1
            RECM
    %endmacro
    %macro OP3M 2
            LOADAB
            LENGTHS
            %1 xmm1, xmm2, %2
            pushfq
            RECX xmm0
            pop rax
            and eax, 0x8d5
            RECQ rax
    %endmacro
    %macro OPV 1
            LOADAB
            pshufd xmm0, xmm2, 0x4e
            pxor xmm0, xmm1
            %1 xmm1, xmm2
            RECX xmm1
    %endmacro
    %macro OPMMX 1
            movq mm1, [rsi]
            movq mm2, [rdi + 8]
            %1 mm1, mm2
            movq [r14], mm1
            add r14, 8
    %endmacro
    %macro OPMMX3 2
            movq mm1, [rsi]
            movq mm2, [rdi + 8]
            %1 mm1, mm2, %2
            movq [r14], mm1
            add r14, 8
    %endmacro
    %macro SHIFTI 2
            movdqa xmm1, [rsi]
            %1 xmm1, %2
            RECX xmm1
    %endmacro
    %macro SHIFTMMX 2
            movq mm1, [rsi]
            %1 mm1, %2
            movq [r14], mm1
            add r14, 8
    %endmacro
    %macro OPFLAGS 1
            LOADAB
            push 0x8d7
            popfq
            %1 xmm1, xmm2
            pushfq
            pop rax
            and eax, 0x8d5
            RECQ rax
            RECM
    %endmacro
    %macro OPSTRI 2
            LOADAB
            LENGTHS
            mov rcx, -1
            %1 xmm1, xmm2, %2
            pushfq
            RECQ rcx
            pop rax
            and eax, 0x8d5
            RECQ rax
    %endmacro
    %macro TOGPR 1
            LOADAB
            mov rax, -1
            %1 eax, xmm1
            RECQ rax
            %1 rax, xmm1
            RECQ rax
            %1 eax, [rdi]
            RECQ rax
            RECM
    %endmacro
    %macro FROMGPR 1
            LOADAB
            mov rax, [rdi]
            %1 xmm1, rax
            RECX xmm1
            %1 xmm2, eax
            RECX xmm2
            %1 xmm2, dword [rsi + 4]
            RECX xmm2
            RECM
    %endmacro
    %macro MISC 0
            LOADAB
            movmskps eax, xmm1
            RECQ rax
            movmskpd eax, xmm1
            RECQ rax
            pmovmskb eax, xmm1
            RECQ rax
            mov rax, -1
            pextrb eax, xmm1, 13
            RECQ rax
            pextrw eax, xmm1, 6
            RECQ rax
            pextrd eax, xmm1, 2
            RECQ rax
            pextrq rax, xmm1, 1
            RECQ rax
            extractps eax, xmm1, 3
            RECQ rax
            pextrw [r14], xmm1, 3
            add r14, 8
            pextrb [r14], xmm1, 9
            add r14, 8
            mov rax, [rdi]
            pinsrb xmm1, eax, 7
            pinsrw xmm1, eax, 2
            pinsrd xmm1, eax, 1
            pinsrq xmm1, rax, 1
            RECX xmm1
            pinsrw xmm2, [rsi + 6], 5
            pinsrb xmm2, [rsi + 3], 15
            insertps xmm2, [rsi + 4], 0x36
            RECX xmm2
            movd eax, xmm2
            RECQ rax
            movq rax, xmm2
            RECQ rax
            movd xmm3, eax
            RECX xmm3
            movq xmm3, rax
            RECX xmm3
            mov rax, [rsi]
            mov rcx, [rdi]
            crc32 eax, cl
            crc32 eax, cx
            crc32 eax, ecx
            crc32 rax, rcx
            crc32 eax, byte [rsi + 5]
            crc32 eax, word [rsi + 6]
            crc32 eax, dword [rsi + 8]
            crc32 rax, qword [rdi + 8]
            RECQ rax
            ; moves of every width
            LOADAB
            movdqa xmm3, xmm2
            movss xmm3, [rsi + 4]
            RECX xmm3
            movsd xmm3, [rsi + 8]
            RECX xmm3
            movlhps xmm3, xmm1
            RECX xmm3
            movhlps xmm3, xmm1
            RECX xmm3
            movq xmm3, xmm1
            RECX xmm3
            movq xmm3, [rsi + 8]
            RECX xmm3
            movddup xmm3, [rsi + 8]
            RECX xmm3
            lddqu xmm3, [rsi + 3]
            RECX xmm3
            movups xmm3, [rsi + 5]
            RECX xmm3
            movdqu [r14 + 1], xmm1
            add r14, 24
            movups [r14 + 3], xmm2
            add r14, 24
            movhps [r14], xmm1
            movlps [r14 + 8], xmm2
            add r14, 16
            movss [r14], xmm1
            movsd [r14 + 4], xmm2
            add r14, 16
            movq [r14], xmm1
            add r14, 8
            movq2dq xmm3, mm1
            RECX xmm3
            movdq2q mm3, xmm2
            movq [r14], mm3
            add r14, 8
            movd mm3, [rsi + 4]
            movq [r14], mm3
            add r14, 8
            movd mm3, eax
            movd [r14], mm3
            add r14, 8
            pinsrw mm3, eax, 1
            pextrw eax, mm3, 1
            RECQ rax
            pmovmskb eax, mm1
            RECQ rax
            pshufw mm3, [rsi], 0x1b
            movq [r14], mm3
            add r14, 8
            cvtpi2ps xmm3, mm1
            RECX xmm3
            cvtpi2pd xmm3, [rsi]
            RECX xmm3
            cvtps2pi mm3, xmm1
            movq [r14], mm3
            add r14, 8
            cvttps2pi mm3, xmm2
            movq [r14], mm3
            add r14, 8
            cvtpd2pi mm3, xmm1
            movq [r14], mm3
            add r14, 8
            cvttpd2pi mm3, [rdi]
            movq [r14], mm3
            add r14, 8
            ; MASKMOVDQU / MASKMOVQ to the output
            push rdi
            lea rdi, [r14]
            mov qword [rdi], 0
            mov qword [rdi + 8], 0
            maskmovdqu xmm1, xmm2
            add r14, 16
            lea rdi, [r14]
            mov qword [rdi], 0
            maskmovq mm1, mm2
            add r14, 8
            pop rdi
            RECM
    %endmacro

            lea r14, [results]
            xor ebp, ebp
    .mode:  mov eax, [modes + rbp * 4]
            mov [mode], eax
            ldmxcsr [mode]
            xor r12d, r12d
    .outer: xor r13d, r13d
    .inner: mov rsi, r12
            shl rsi, 4
            lea rax, [vectors]
            add rsi, rax
            mov rdi, r13
            shl rdi, 4
            add rdi, rax
        OP2 addps
        OP2 addpd
        OP2 addss
        OP2 addsd
        OP2 subps
        OP2 subpd
        OP2 subss
        OP2 subsd
        OP2 mulps
        OP2 mulpd
        OP2 mulss
        OP2 mulsd
        OP2 divps
        OP2 divpd
        OP2 divss
        OP2 divsd
        OP2 minps
        OP2 minpd
        OP2 minss
        OP2 minsd
        OP2 maxps
        OP2 maxpd
        OP2 maxss
        OP2 maxsd
        OP2 sqrtps
        OP2 sqrtpd
        OP2 sqrtss
        OP2 sqrtsd
        OP2 rcpps
        OP2 rcpss
        OP2 rsqrtps
        OP2 rsqrtss
        OP2 andps
        OP2 andpd
        OP2 andnps
        OP2 andnpd
        OP2 orps
        OP2 orpd
        OP2 xorps
        OP2 xorpd
        OP2 haddps
        OP2 haddpd
        OP2 hsubps
        OP2 hsubpd
        OP2 addsubps
        OP2 addsubpd
        OP2 unpcklps
        OP2 unpckhps
        OP2 unpcklpd
        OP2 unpckhpd
        OP2 cvtps2pd
        OP2 cvtpd2ps
        OP2 cvtss2sd
        OP2 cvtsd2ss
        OP2 cvtdq2ps
        OP2 cvtps2dq
        OP2 cvttps2dq
        OP2 cvttpd2dq
        OP2 cvtdq2pd
        OP2 cvtpd2dq
        OP2 movsldup
        OP2 movshdup
        OP2 movddup
        OP2 movss
        OP2 movsd
        OP2 movhlps
        OP2 movlhps
        OP2 movaps
        OP2 movq
        OP2 paddb
        OP2 paddw
        OP2 paddd
        OP2 paddq
        OP2 paddsb
        OP2 paddsw
        OP2 paddusb
        OP2 paddusw
        OP2 psubb
        OP2 psubw
        OP2 psubd
        OP2 psubq
        OP2 psubsb
        OP2 psubsw
        OP2 psubusb
        OP2 psubusw
        OP2 pmullw
        OP2 pmulhw
        OP2 pmulhuw
        OP2 pmuludq
        OP2 pmaddwd
        OP2 psadbw
        OP2 pavgb
        OP2 pavgw
        OP2 pminub
        OP2 pmaxub
        OP2 pminsw
        OP2 pmaxsw
        OP2 pcmpeqb
        OP2 pcmpeqw
        OP2 pcmpeqd
        OP2 pcmpgtb
        OP2 pcmpgtw
        OP2 pcmpgtd
        OP2 packsswb
        OP2 packssdw
        OP2 packuswb
        OP2 punpcklbw
        OP2 punpcklwd
        OP2 punpckldq
        OP2 punpcklqdq
        OP2 punpckhbw
        OP2 punpckhwd
        OP2 punpckhdq
        OP2 punpckhqdq
        OP2 pand
        OP2 pandn
        OP2 por
        OP2 pxor
        OP2 psllw
        OP2 pslld
        OP2 psllq
        OP2 psrlw
        OP2 psrld
        OP2 psrlq
        OP2 psraw
        OP2 psrad
        OP2 pshufb
        OP2 phaddw
        OP2 phaddd
        OP2 phaddsw
        OP2 phsubw
        OP2 phsubd
        OP2 phsubsw
        OP2 pmaddubsw
        OP2 pmulhrsw
        OP2 psignb
        OP2 psignw
        OP2 psignd
        OP2 pabsb
        OP2 pabsw
        OP2 pabsd
        OP2 pmovsxbw
        OP2 pmovsxbd
        OP2 pmovsxbq
        OP2 pmovsxwd
        OP2 pmovsxwq
        OP2 pmovsxdq
        OP2 pmovzxbw
        OP2 pmovzxbd
        OP2 pmovzxbq
        OP2 pmovzxwd
        OP2 pmovzxwq
        OP2 pmovzxdq
        OP2 pmuldq
        OP2 pmulld
        OP2 pminsb
        OP2 pminsd
        OP2 pminuw
        OP2 pminud
        OP2 pmaxsb
        OP2 pmaxsd
        OP2 pmaxuw
        OP2 pmaxud
        OP2 packusdw
        OP2 pcmpeqq
        OP2 pcmpgtq
        OP2 phminposuw
        OPM addps
        OPM mulpd
        OPM divss
        OPM sqrtsd
        OPM3 cmpps, 1
        OPM pmulld
        OPM pshufb
        OPM cvtps2pd
        OPM cvtdq2pd
        OPM pmovzxbw
        OPM movss
        OPM movsd
        OPM movhps
        OPM movlps
        OPM movhpd
        OPM movlpd
        OP3 cmpps, 0
        OP3 cmppd, 0
        OP3 cmpss, 0
        OP3 cmpsd, 0
        OP3 cmpps, 1
        OP3 cmppd, 1
        OP3 cmpss, 1
        OP3 cmpsd, 1
        OP3 cmpps, 2
        OP3 cmppd, 2
        OP3 cmpss, 2
        OP3 cmpsd, 2
        OP3 cmpps, 3
        OP3 cmppd, 3
        OP3 cmpss, 3
        OP3 cmpsd, 3
        OP3 cmpps, 4
        OP3 cmppd, 4
        OP3 cmpss, 4
        OP3 cmpsd, 4
        OP3 cmpps, 5
        OP3 cmppd, 5
        OP3 cmpss, 5
        OP3 cmpsd, 5
        OP3 cmpps, 6
        OP3 cmppd, 6
        OP3 cmpss, 6
        OP3 cmpsd, 6
        OP3 cmpps, 7
        OP3 cmppd, 7
        OP3 cmpss, 7
        OP3 cmpsd, 7
        OP3 roundps, 0
        OP3 roundpd, 0
        OP3 roundss, 0
        OP3 roundsd, 0
        OP3 roundps, 1
        OP3 roundpd, 1
        OP3 roundss, 1
        OP3 roundsd, 1
        OP3 roundps, 2
        OP3 roundpd, 2
        OP3 roundss, 2
        OP3 roundsd, 2
        OP3 roundps, 3
        OP3 roundpd, 3
        OP3 roundss, 3
        OP3 roundsd, 3
        OP3 roundps, 4
        OP3 roundpd, 4
        OP3 roundss, 4
        OP3 roundsd, 4
        OP3 roundps, 8
        OP3 roundpd, 8
        OP3 roundss, 8
        OP3 roundsd, 8
        OP3 roundps, 9
        OP3 roundpd, 9
        OP3 roundss, 9
        OP3 roundsd, 9
        OP3 roundps, 12
        OP3 roundpd, 12
        OP3 roundss, 12
        OP3 roundsd, 12
        OP3 shufps, 27
        OP3 shufps, 228
        OP3 shufpd, 1
        OP3 shufpd, 2
        OP3 pshufd, 27
        OP3 pshufhw, 57
        OP3 pshuflw, 147
        OP3 dpps, 255
        OP3 dpps, 49
        OP3 dpps, 242
        OP3 dppd, 49
        OP3 dppd, 51
        OP3 blendps, 5
        OP3 blendpd, 2
        OP3 pblendw, 165
        OP3 mpsadbw, 0
        OP3 mpsadbw, 5
        OP3 palignr, 3
        OP3 palignr, 17
        OP3 insertps, 92
        OP3 insertps, 145
        OP3M pcmpistrm, 0
        OP3M pcmpestrm, 0
        OP3M pcmpistrm, 12
        OP3M pcmpestrm, 12
        OP3M pcmpistrm, 24
        OP3M pcmpestrm, 24
        OP3M pcmpistrm, 68
        OP3M pcmpestrm, 68
        OP3M pcmpistrm, 1
        OP3M pcmpestrm, 1
        OP3M pcmpistrm, 13
        OP3M pcmpestrm, 13
        OP3M pcmpistrm, 25
        OP3M pcmpestrm, 25
        OP3M pcmpistrm, 69
        OP3M pcmpestrm, 69
        OP3M pcmpistrm, 112
        OP3M pcmpestrm, 112
        OP3M pcmpistrm, 60
        OP3M pcmpestrm, 60
        OPMMX paddb
        OPMMX paddw
        OPMMX paddd
        OPMMX paddq
        OPMMX paddsb
        OPMMX paddsw
        OPMMX paddusb
        OPMMX paddusw
        OPMMX psubb
        OPMMX psubw
        OPMMX psubd
        OPMMX psubq
        OPMMX psubsb
        OPMMX psubsw
        OPMMX psubusb
        OPMMX psubusw
        OPMMX pmullw
        OPMMX pmulhw
        OPMMX pmulhuw
        OPMMX pmuludq
        OPMMX pmaddwd
        OPMMX psadbw
        OPMMX pavgb
        OPMMX pavgw
        OPMMX pminub
        OPMMX pmaxub
        OPMMX pminsw
        OPMMX pmaxsw
        OPMMX pcmpeqb
        OPMMX pcmpeqw
        OPMMX pcmpeqd
        OPMMX pcmpgtb
        OPMMX pcmpgtw
        OPMMX pcmpgtd
        OPMMX packsswb
        OPMMX packssdw
        OPMMX packuswb
        OPMMX punpcklbw
        OPMMX punpcklwd
        OPMMX punpckldq
        OPMMX punpckhbw
        OPMMX punpckhwd
        OPMMX punpckhdq
        OPMMX pand
        OPMMX pandn
        OPMMX por
        OPMMX pxor
        OPMMX psllw
        OPMMX pslld
        OPMMX psllq
        OPMMX psrlw
        OPMMX psrld
        OPMMX psrlq
        OPMMX psraw
        OPMMX psrad
        OPMMX pshufb
        OPMMX phaddw
        OPMMX phaddd
        OPMMX phaddsw
        OPMMX phsubw
        OPMMX phsubd
        OPMMX phsubsw
        OPMMX pmaddubsw
        OPMMX pmulhrsw
        OPMMX psignb
        OPMMX psignw
        OPMMX psignd
        OPMMX pabsb
        OPMMX pabsw
        OPMMX pabsd
        OPMMX3 pshufw, 27
        OPMMX3 palignr, 3
        OPMMX3 palignr, 9
        SHIFTI psllw, 0
        SHIFTI pslld, 0
        SHIFTI psllq, 0
        SHIFTI psrlw, 0
        SHIFTI psrld, 0
        SHIFTI psrlq, 0
        SHIFTI psraw, 0
        SHIFTI psrad, 0
        SHIFTI pslldq, 0
        SHIFTI psrldq, 0
        SHIFTI psllw, 3
        SHIFTI pslld, 3
        SHIFTI psllq, 3
        SHIFTI psrlw, 3
        SHIFTI psrld, 3
        SHIFTI psrlq, 3
        SHIFTI psraw, 3
        SHIFTI psrad, 3
        SHIFTI pslldq, 3
        SHIFTI psrldq, 3
        SHIFTI psllw, 15
        SHIFTI pslld, 15
        SHIFTI psllq, 15
        SHIFTI psrlw, 15
        SHIFTI psrld, 15
        SHIFTI psrlq, 15
        SHIFTI psraw, 15
        SHIFTI psrad, 15
        SHIFTI pslldq, 15
        SHIFTI psrldq, 15
        SHIFTI psllw, 16
        SHIFTI pslld, 16
        SHIFTI psllq, 16
        SHIFTI psrlw, 16
        SHIFTI psrld, 16
        SHIFTI psrlq, 16
        SHIFTI psraw, 16
        SHIFTI psrad, 16
        SHIFTI pslldq, 16
        SHIFTI psrldq, 16
        SHIFTI psllw, 33
        SHIFTI pslld, 33
        SHIFTI psllq, 33
        SHIFTI psrlw, 33
        SHIFTI psrld, 33
        SHIFTI psrlq, 33
        SHIFTI psraw, 33
        SHIFTI psrad, 33
        SHIFTI pslldq, 16
        SHIFTI psrldq, 16
        SHIFTI psllw, 64
        SHIFTI pslld, 64
        SHIFTI psllq, 64
        SHIFTI psrlw, 64
        SHIFTI psrld, 64
        SHIFTI psrlq, 64
        SHIFTI psraw, 64
        SHIFTI psrad, 64
        SHIFTI pslldq, 13
        SHIFTI psrldq, 13
        OPFLAGS comiss
        OPFLAGS ucomiss
        OPFLAGS comisd
        OPFLAGS ucomisd
        OPFLAGS ptest
        OPSTRI pcmpistri, 0
        OPSTRI pcmpestri, 0
        OPSTRI pcmpistri, 12
        OPSTRI pcmpestri, 12
        OPSTRI pcmpistri, 24
        OPSTRI pcmpestri, 24
        OPSTRI pcmpistri, 68
        OPSTRI pcmpestri, 68
        OPSTRI pcmpistri, 1
        OPSTRI pcmpestri, 1
        OPSTRI pcmpistri, 13
        OPSTRI pcmpestri, 13
        OPSTRI pcmpistri, 25
        OPSTRI pcmpestri, 25
        OPSTRI pcmpistri, 69
        OPSTRI pcmpestri, 69
        OPSTRI pcmpistri, 112
        OPSTRI pcmpestri, 112
        OPSTRI pcmpistri, 60
        OPSTRI pcmpestri, 60
        TOGPR cvtss2si
        TOGPR cvttss2si
        TOGPR cvtsd2si
        TOGPR cvttsd2si
        FROMGPR cvtsi2ss
        FROMGPR cvtsi2sd

        OPV blendvps
        OPV blendvpd
        OPV pblendvb
        MISC
        SHIFTMMX psllw, 0
        SHIFTMMX pslld, 0
        SHIFTMMX psllq, 0
        SHIFTMMX psrlw, 0
        SHIFTMMX psrld, 0
        SHIFTMMX psrlq, 0
        SHIFTMMX psraw, 0
        SHIFTMMX psrad, 0
        SHIFTMMX psllw, 3
        SHIFTMMX pslld, 3
        SHIFTMMX psllq, 3
        SHIFTMMX psrlw, 3
        SHIFTMMX psrld, 3
        SHIFTMMX psrlq, 3
        SHIFTMMX psraw, 3
        SHIFTMMX psrad, 3
        SHIFTMMX psllw, 15
        SHIFTMMX pslld, 15
        SHIFTMMX psllq, 15
        SHIFTMMX psrlw, 15
        SHIFTMMX psrld, 15
        SHIFTMMX psrlq, 15
        SHIFTMMX psraw, 15
        SHIFTMMX psrad, 15
        SHIFTMMX psllw, 16
        SHIFTMMX pslld, 16
        SHIFTMMX psllq, 16
        SHIFTMMX psrlw, 16
        SHIFTMMX psrld, 16
        SHIFTMMX psrlq, 16
        SHIFTMMX psraw, 16
        SHIFTMMX psrad, 16
        SHIFTMMX psllw, 33
        SHIFTMMX pslld, 33
        SHIFTMMX psllq, 33
        SHIFTMMX psrlw, 33
        SHIFTMMX psrld, 33
        SHIFTMMX psrlq, 33
        SHIFTMMX psraw, 33
        SHIFTMMX psrad, 33

            emms
            inc r13
            cmp r13, VECTORS
            jb .inner
            inc r12
            cmp r12, VECTORS
            jb .outer
            inc ebp
            cmp ebp, 4
            jb .mode
            lea rax, [results]
            sub r14, rax
            mov r15, r14
"""#

private let data = #"""

    VECTORS equ 8
    align 16
    vectors:
        dd 1.5, -0.0, __Infinity__, __QNaN__
        dd 0x00000001, 0xC0300000, 0x7F7FFFFF, 0x7FA00000
        dq 0x3FD5555555555555, 0xFFF0000000000000
        dq 0x000FFFFFFFFFFFFF, 0x7FF4000000000000
        dd 0x80000000, 0x7FFFFFFF, 0x12345678, 0xFFFF0001
        dq 0xAA55FE01FF807F00, 0x0102030405060708
        dd 0x4B800001, 0x3F000000, 0x40200000, 0xBFC00000
        dq 0x43E0000000000000, 0xC1E0000000100000
    modes: dd 0x1F80, 0x3FC0, 0xDF80, 0x7F80
    mode: dd 0x1F80
"""#

@Suite("SSE against the host CPU", .enabled(if: hostCPUHas(["sse4_2", "ssse3", "sse4_1"]), "this CPU lacks SSE4.2"))
struct SSEHostTests {
    @Test("2.5 MB of MMX/SSE/SSE2/SSE3/SSSE3/SSE4.1/SSE4.2 results under four MXCSR modes equal the CPU's")
    func againstHostCPU() throws {
        // The guest turns on OSFXSR and OSXMMEXCPT first, as an OS does.
        let (native, guest) = try runNativeAndOnInterpreter(
            name: "sse", body: body, data: data, bss: "alignb 64\nresults: resb 3000000",
            guestPrologue: "mov rax, cr4\n        or rax, 0x600\n        mov cr4, rax", length: { "mov \($0), r15" })
        #expect(native.status == 0)
        #expect(guest.status == 0, "\(guest.message ?? "")")
        let expected = Array(native.stdoutBytes)
        #expect(expected.count > 2_000_000)
        let got = guest.outputBytes
        let same = got == expected
        let at = zip(got, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(got.count, expected.count)
        func around(_ b: [UInt8]) -> String { b[max(0, at - 16)..<min(b.count, at + 32)].map { String($0, radix: 16) }.joined(separator: " ") }
        #expect(same, "\(got.count) bytes vs \(expected.count); first difference at byte \(at): guest \(around(got)) / host \(around(expected))")
    }

    /// XSAVE, XSAVEOPT and XSAVEC of x87 | SSE into areas pre-filled with 0xAA (what each
    /// form writes, skips and puts in the header), and XRSTOR of the standard and compacted
    /// forms with components absent, as this CPU does them. Left out: states where this
    /// CPU's XINUSE (modification tracking) and the interpreter's (by value) may differ,
    /// which the SDM allows (SaveRestore.swift, `stateInUse`): XMM registers zeroed by an
    /// instruction, or an XRSTOR of initial XMM with an MXCSR other than 0x1F80.
    /// FIP/FCS/FDP/FDS (addresses of the program) are zeroed before the compare.
    @Test("XSAVE/XSAVEOPT/XSAVEC/XRSTOR of x87 | SSE: the bytes written and the headers equal the CPU's")
    func xsaveAgainstHostCPU() throws {
        guard hostCPUHas(["xsave", "xsaveopt", "xsavec"]) else {
            print("skipped: the host CPU lacks XSAVE, XSAVEOPT or XSAVEC"); return
        }
        // The sections are only 4-byte aligned: RBX = a 64-byte-aligned arena in .bss holding
        // the two templates (copied there) and the 14 save areas, copied to `results` last.
        let body = """
        %macro area 2           ; area number, instruction: fill with 0xAA then save into it
                lea rdi, [rbx + 2*576 + %1*576]
                mov ecx, 576
                mov al, 0xAA
                rep stosb
                mov eax, 3
                xor edx, edx
                %2 [rbx + 2*576 + %1*576]
        %endmacro
        %macro restorable 2     ; area, XCOMP_BV: a copy at RBX + 16*576 that XRSTOR takes (the
                                ; saves leave the 0xAA fill in header bytes they do not write)
                lea rsi, [rbx + 2*576 + %1*576]
                lea rdi, [rbx + 16*576]
                mov ecx, 512
                rep movsb
                mov rax, [rsi]
                and eax, 3
                stosq
                mov rax, %2
                stosq
                xor eax, eax
                mov ecx, 48
                rep stosb
        %endmacro
                lea rbx, [arena + 63]
                and rbx, -64
                lea rsi, [initial]
                mov rdi, rbx
                mov ecx, 2*576
                rep movsb
                mov eax, 3
                xor edx, edx
                xrstor [rbx]                ; x87 and SSE in their initial configuration
                area 0, xsave
                area 1, xsaveopt
                area 2, xsavec
                ldmxcsr [daz]               ; MXCSR not 0x1F80, XMM still initial
                area 3, xsavec
                area 4, xsaveopt
                fld1                        ; x87 and SSE in use
                fldpi
                movdqu xmm3, [pattern]
                movdqu xmm15, [pattern + 16]
                area 5, xsave
                area 6, xsaveopt
                area 7, xsavec
                area 8, xsave64
                mov eax, 2                  ; SSE only: XMM initial, MXCSR from memory
                xor edx, edx
                xrstor [rbx]
                area 9, xsave
                restorable 7, 0x8000000000000003
                fldz                        ; clobber, then the compacted image back
                movdqu xmm3, [pattern + 16]
                mov eax, 3
                xor edx, edx
                xrstor [rbx + 16*576]
                area 10, xsave
                mov eax, 3                  ; compacted, XSTATE_BV = 0: both initial, MXCSR = 0x1F80
                xor edx, edx
                xrstor [rbx + 576]
                area 11, xsavec
                area 12, xsave
                mov eax, 1                  ; x87 only from area 5: SSE untouched
                xor edx, edx
                fninit
                restorable 5, 0
                mov eax, 1
                xor edx, edx
                xrstor [rbx + 16*576]
                area 13, xsave
                lea rdi, [rbx + 2*576 + 8]  ; the program's addresses differ: zero them
                mov ecx, 14
        .zero:  mov qword [rdi], 0
                mov qword [rdi + 8], 0
                add rdi, 576
                loop .zero
                lea rsi, [rbx + 2*576]
                lea rdi, [results]
                mov ecx, 14*576
                rep movsb
        """
        let data = """
        initial: times 24 db 0      ; standard form, XSTATE_BV = 0, MXCSR = 0x1F80
                 dd 0x1F80, 0
                 times 576 - 32 db 0
        compactedInitial: times 24 db 0
                 dd 0x1234, 0
                 times 512 - 32 db 0
                 dq 0, 0x8000000000000003
                 times 48 db 0
        daz:     dd 0x1FC0
        pattern: dq 0x0123456789ABCDEF, 0xFEDCBA9876543210, 0x1111222233334444, 0x5555666677778888
        """
        let (native, guest) = try runNativeAndOnInterpreter(
            name: "xsave", body: body, data: data, bss: "results: resb 14*576\narena: resb 18*576",
            guestPrologue: """
                mov rax, cr4
                or rax, 0x40600
                mov cr4, rax
                xor ecx, ecx
                mov eax, 3
                xor edx, edx
                xsetbv
            """, length: { "mov \($0), 14*576" }, configure: withoutKVM)
        #expect(native.status == 0)
        #expect(guest.status == 0, "\(guest.message ?? "")")
        let expected = Array(native.stdoutBytes), got = guest.outputBytes
        #expect(expected.count == 14 * 576)
        var differences: [String] = []
        for i in 0..<min(got.count, expected.count) where got[i] != expected[i] {
            differences.append("area \(i / 576) byte \(i % 576): guest \(String(got[i], radix: 16)) host \(String(expected[i], radix: 16))")
        }
        #expect(got.count == expected.count && differences.isEmpty, "\(differences.count) bytes differ: \(differences.prefix(12))")
    }
}

/// Real-mode programs that pin down the fault rules and the save-area layouts (SDM vol. 1
/// 10.5.1, 13.4; vol. 2 exception tables). Handlers for #UD, #NM, #GP and #XM print U, N,
/// G or X and continue at [next].
@Suite("SSE faults and state save areas")
struct SSEStateTests {
    func run(_ body: String, model: String = CPUModel.default.name) throws -> GuestRun {
        try runImage(try assemble(bootProgram("""
                xor ax, ax
                mov ds, ax
                mov ss, ax
                mov sp, 0x7000
                mov word [6*4], h_ud
                mov word [6*4+2], 0
                mov word [7*4], h_nm
                mov word [7*4+2], 0
                mov word [13*4], h_gp
                mov word [13*4+2], 0
                mov word [19*4], h_xm
                mov word [19*4+2], 0
        \(body)
                mov al, 0
                out 0xf4, al
        h_ud:   mov al, 'U'
                jmp h_any
        h_nm:   mov al, 'N'
                jmp h_any
        h_gp:   mov al, 'G'
                jmp h_any
        h_xm:   mov al, 'X'
        h_any:  out 0xe9, al
                add sp, 6
                jmp [next]
        space:  mov al, ' '
                out 0xe9, al
                ret
        next:   dw 0
        mx:     dd 0
        one:    dd 1.0
        """ + "\n" + hexHelpers)), backend: .interp, name: "sse-state.bin", timeout: 20,
           configure: { withoutKVM(&$0); $0.cpuModel = model })
    }

    @Test("#UD without CR4.OSFXSR, #NM with CR0.TS, #GP for a misaligned MOVAPS, unmasked divide-by-zero as #UD then #XM with the flag set and the destination kept")
    func faults() throws {
        let r = try run("""
                mov word [next], s1
                addps xmm0, xmm1
        s1:     mov eax, cr4
                or eax, 0x200
                mov cr4, eax
                mov word [next], s2
                smsw ax
                or ax, 8
                lmsw ax
                addps xmm0, xmm1
        s2:     clts
                mov word [next], s3
                movaps xmm0, [0x1001]
        s3:     movups xmm0, [0x1001]      ; no fault
                mov dword [mx], 0x1D80     ; ZM clear
                ldmxcsr [mx]
                xorps xmm1, xmm1
                movss xmm0, [one]
                mov word [next], s4
                divss xmm0, xmm1
        s4:     mov eax, cr4
                or eax, 0x400
                mov cr4, eax
                mov word [next], s5
                divss xmm0, xmm1
        s5:     call space
                stmxcsr [mx]
                mov ax, [mx]
                call hex16
                call space
                movd eax, xmm0
                shr eax, 16
                call hex16
                call space
                mov word [next], s6
                mov dword [mx], 0x10000    ; reserved MXCSR bit
                ldmxcsr [mx]
        s6:     mov word [next], s7
                ud2
        s7:
        """)
        #expect(r.output == "UNGUX 1d84 3f80 GU", "\(r.output) \(r.message ?? "")")
    }

    @Test("FXSAVE stores the SDM's 32-bit layout (MMX state in ST order, MXCSR_MASK) and FXRSTOR restores it")
    func fxsave() throws {
        let r = try run("""
                mov eax, cr4
                or eax, 0x600
                mov cr4, eax
                mov dword [mx], 0x9fc0
                ldmxcsr [mx]
                mov dword [0x2000], 0x11223344
                mov dword [0x2004], 0x55667788
                movq mm3, [0x2000]
                movdqu xmm7, [0x2000]
                pcmpeqb xmm5, xmm5
                fxsave [0x3000]
                mov ax, [0x3000]           ; FCW
                call hex16
                call space
                mov ax, [0x3002]           ; FSW: TOP = 0
                call hex16
                call space
                mov ax, [0x3004]           ; abridged tags: all valid after MMX
                call hex16
                call space
                mov ax, [0x3000 + 24]      ; MXCSR
                call hex16
                call space
                mov ax, [0x3000 + 28]      ; MXCSR_MASK
                call hex16
                call space
                mov ax, [0x3000 + 32 + 3*16 + 2]   ; MM3 bits 16-31
                call hex16
                call space
                mov ax, [0x3000 + 32 + 3*16 + 8]   ; its exponent: all ones
                call hex16
                call space
                mov ax, [0x3000 + 160 + 7*16 + 4]  ; XMM7 bits 32-47
                call hex16
                call space
                mov ax, [0x3000 + 160 + 5*16 + 14] ; XMM5 top word
                call hex16
                call space
                pxor xmm7, xmm7
                mov dword [0x3000 + 24], 0x1f80
                fxrstor [0x3000]
                movd eax, xmm7
                call hex16
                call space
                stmxcsr [mx]
                mov ax, [mx]
                call hex16
                mov word [next], done
                fxsave [0x3008]            ; misaligned: #GP
        done:
        """)
        #expect(r.output == "037f 0000 00ff 9fc0 ffff 1122 ffff 7788 ffff 3344 1f80G", "\(r.output) \(r.message ?? "")")
    }

    @Test("XGETBV/XSETBV and XSAVE/XSAVEC/XRSTOR with XCR0 = x87|SSE: header bits, the #GP rules, init of absent components")
    func xsave() throws {
        let r = try run("""
                mov word [next], x1
                xor ecx, ecx
                xgetbv                      ; CR4.OSXSAVE clear: #UD
        x1:     mov eax, cr4
                or eax, 0x40600
                mov cr4, eax
                xor ecx, ecx
                xgetbv
                call hex16                  ; 0001
                call space
                mov word [next], x2
                mov eax, 7                  ; AVX is not offered: #GP
                xor edx, edx
                xsetbv
        x2:     mov eax, 3
                xor edx, edx
                xsetbv
                xgetbv
                call hex16                  ; 0003
                call space
                mov dword [0x2000], 0xdeadbeef
                movss xmm2, [0x2000]
                mov edi, 0x3000
                mov cx, 576/2
                xor ax, ax
                rep stosw
                mov eax, 3
                xor edx, edx
                xsave [0x3000]
                mov ax, [0x3000 + 512]      ; XSTATE_BV: SSE in use, x87 in its initial state
                call hex16
                call space
                mov ax, [0x3000 + 160 + 2*16 + 2]
                call hex16                  ; dead
                call space
                mov eax, 3
                xsavec [0x3400]
                mov ax, [0x3400 + 520]      ; XCOMP_BV low word
                call hex16
                mov ax, [0x3400 + 526]      ; and its top word (bit 63: compacted)
                call hex16
                call space
                and word [0x3000 + 512], 1  ; XSTATE_BV[1] = 0: XRSTOR initialises XMM
                mov eax, 3
                xrstor [0x3000]
                movd eax, xmm2
                shr eax, 16
                call hex16                  ; 0000
                call space
                mov word [next], x3
                mov byte [0x3000 + 520], 1  ; XCOMP_BV nonzero in the standard form: #GP
                xrstor [0x3000]
        x3:     mov word [next], x4
                xsave [0x3010]              ; not 64-byte aligned: #GP
        x4:
        """)
        #expect(r.output == "U0001 G0003 0002 dead 00038000 0000 GG", "\(r.output) \(r.message ?? "")")
    }

    @Test("a CPU model without XSAVE: CR4.OSXSAVE is reserved (#GP), XGETBV is #UD, no XSAVE flags")
    func noXSAVE() throws {
        let r = try run("""
                mov word [next], n1
                mov eax, cr4
                or eax, 0x40000
                mov cr4, eax                ; #GP
        n1:     mov word [next], n2
                xor ecx, ecx
                xgetbv                      ; #UD
        n2:     mov eax, 0xD
                xor ecx, ecx
                cpuid
                or eax, ebx
                or eax, ecx
                call hex16                  ; 0000
                mov eax, 1
                cpuid
                shr ecx, 16
                and cx, 0x0C00              ; XSAVE and OSXSAVE clear
                mov ax, cx
                call hex16
        """, model: "westmere")
        // Leaf 0xD is past Westmere's highest basic leaf (0xB): it answers as leaf 0xB.0 does.
        #expect(r.output == "GU01010000", "\(r.output) \(r.message ?? "")")
    }
}

@Suite("KVM FPU state")
struct KVMFPUStateTests {
    @Test("XMM, MMX/x87 registers (stack order vs physical) and MXCSR survive writeState/readState on KVM (KVM_SET_XSAVE/KVM_GET_XSAVE)", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func roundTrip() throws {
        let memory = try GuestMemoryMap(ramSize: 1 << 20)
        let (vm, vcpus) = try KVMDevice(path: KVMDevice.defaultPath).makeMachine(memory: memory, cpus: 1, cpu: defaultGuestCPU())
        _ = vm
        var s = try vcpus[0].readState()
        for i in 0..<16 { s.fpu.xmm[i] = XMMRegister(low: 0x0123_4567_89AB_CDEF &* UInt64(i + 1), high: ~UInt64(i)) }
        s.fpu.mxcsr = 0x9FC0 | 0x5
        s.fpu.fsw = 3 << 11   // TOP = 3: ST(0) is physical register 3
        s.fpu.ftw = 0xA5
        for i in 0..<8 { s.fpu.st[i] = X87Register(significand: UInt64(0x1111 * (i + 1)), signExponent: UInt16(0x4000 + i)) }
        try vcpus[0].writeState(s)
        let back = try vcpus[0].readState()
        for i in 0..<16 { #expect(back.fpu.xmm[i] == s.fpu.xmm[i]) }
        #expect(back.fpu.mxcsr == s.fpu.mxcsr)
        #expect(back.fpu.ftw == 0xA5)
        #expect(back.fpu.top == 3)
        for i in 0..<8 { #expect(back.fpu.st[i] == s.fpu.st[i], "physical register \(i)") }
    }
}
