// The 8259A pair: register-level behaviour, and a guest taking UART interrupts through it
// on both backends.
import Devices
import Machine
import Synchronization
import Testing

@Suite("8259A interrupt controllers")
struct PICTests {
    /// Programs both chips as a PC BIOS does: vectors 0x08 and 0x70, cascade on IRQ 2.
    func initialized(autoEOI: Bool = false) -> PIC8259Pair {
        let pic = PIC8259Pair()
        for (command, data, base, cascade) in [(UInt16(0x20), UInt16(0x21), UInt32(0x08), UInt32(0x04)), (0xA0, 0xA1, 0x70, 0x02)] {
            pic.portWrite(command, size: 1, value: 0x11)
            pic.portWrite(data, size: 1, value: base)
            pic.portWrite(data, size: 1, value: cascade)
            pic.portWrite(data, size: 1, value: autoEOI ? 0x03 : 0x01)
        }
        return pic
    }

    @Test("an edge request: IRR, acknowledge into ISR, non-specific EOI; masked lines wait")
    func edgeRequest() {
        let pic = initialized()
        #expect(!pic.hasPendingInterrupt(vcpu: 0))
        pic.setLine(4, high: true)
        #expect(pic.portRead(0x20, size: 1) == 0x10, "IRR")
        #expect(pic.hasPendingInterrupt(vcpu: 0))
        #expect(!pic.hasPendingInterrupt(vcpu: 1), "the 8259A drives vCPU 0 only")
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x0C)
        pic.portWrite(0x20, size: 1, value: 0x0B)   // OCW3: read ISR
        #expect(pic.portRead(0x20, size: 1) == 0x10, "ISR")
        #expect(!pic.hasPendingInterrupt(vcpu: 0), "an edge request is consumed")
        pic.portWrite(0x20, size: 1, value: 0x20)   // EOI
        #expect(pic.portRead(0x20, size: 1) == 0)
        pic.portWrite(0x21, size: 1, value: 0x02)   // mask IRQ 1
        pic.setLine(1, high: true)
        #expect(!pic.hasPendingInterrupt(vcpu: 0))
        pic.portWrite(0x21, size: 1, value: 0x00)
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x09)
        #expect(pic.portRead(0x21, size: 1) == 0x00, "IMR reads back")
    }

    @Test("fully nested priority: a lower request waits for the EOI of a higher one; a higher one nests")
    func priority() {
        let pic = initialized()
        pic.setLine(3, high: true)
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x0B)
        pic.setLine(5, high: true)
        #expect(!pic.hasPendingInterrupt(vcpu: 0), "IRQ 5 is below IRQ 3 in service")
        pic.setLine(1, high: true)
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x09, "IRQ 1 nests above IRQ 3")
        pic.portWrite(0x20, size: 1, value: 0x20)   // ends IRQ 1 (the highest in service)
        #expect(!pic.hasPendingInterrupt(vcpu: 0))
        pic.portWrite(0x20, size: 1, value: 0x63)   // specific EOI for IRQ 3
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x0D)
    }

    @Test("the slave cascades through IRQ 2; a request that went away is a spurious IRQ 7")
    func cascadeAndSpurious() {
        let pic = initialized()
        pic.setLine(12, high: true)
        #expect(pic.hasPendingInterrupt(vcpu: 0))
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x74)
        pic.portWrite(0xA0, size: 1, value: 0x0B)
        #expect(pic.portRead(0xA0, size: 1) == 0x10, "slave ISR: IRQ 12")
        pic.portWrite(0x20, size: 1, value: 0x0B)
        #expect(pic.portRead(0x20, size: 1) == 0x04, "master ISR: IRQ 2")
        pic.portWrite(0xA0, size: 1, value: 0x20)
        pic.portWrite(0x20, size: 1, value: 0x20)
        // Nothing pending: an acknowledge anyway gets IRQ 7's vector, and ISR stays empty.
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x0F)
        #expect(pic.portRead(0x20, size: 1) == 0)
    }

    @Test("an edge request whose line drops before the acknowledge is the spurious IRQ 7 (master) or 15 (slave, with IRQ 2 in service on the master)")
    func spuriousWhenTheLineDrops() {
        let pic = initialized()
        pic.setLine(5, high: true)
        #expect(pic.hasPendingInterrupt(vcpu: 0))
        pic.setLine(5, high: false)
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x0F, "spurious IRQ 7, not IRQ 5's stale request")
        pic.portWrite(0x20, size: 1, value: 0x0B)
        #expect(pic.portRead(0x20, size: 1) == 0, "a spurious IRQ 7 is not in service")
        pic.portWrite(0x20, size: 1, value: 0x0A)
        #expect(pic.portRead(0x20, size: 1) == 0, "nor requested any more")
        // A new rising edge requests again.
        pic.setLine(5, high: true)
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x0D)
        pic.portWrite(0x20, size: 1, value: 0x20)

        pic.setLine(12, high: true)
        #expect(pic.hasPendingInterrupt(vcpu: 0))
        pic.setLine(12, high: false)
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x77, "the slave's spurious IRQ 15")
        pic.portWrite(0xA0, size: 1, value: 0x0B)
        #expect(pic.portRead(0xA0, size: 1) == 0, "nothing in service on the slave")
        pic.portWrite(0x20, size: 1, value: 0x0B)
        #expect(pic.portRead(0x20, size: 1) == 0x04, "the cascade, IRQ 2, in service on the master (its handler EOIs the master only)")
        pic.portWrite(0x20, size: 1, value: 0x20)
        #expect(pic.portRead(0x20, size: 1) == 0)
        #expect(!pic.hasPendingInterrupt(vcpu: 0))
    }

    @Test("through the APIC bus (virtual wire), a PIC request that went away after the CPU saw it is still acknowledged: the spurious vector")
    func spuriousThroughTheAPICBus() {
        let pic = initialized()
        let bus = APICBus(cpus: 1, pic: pic, timers: TimerService(clock: MachineClock(), manual: true), x2APICAvailable: false, onRequest: { _ in })
        pic.setLine(3, high: true)
        #expect(bus.hasPendingInterrupt(vcpu: 0))
        pic.setLine(3, high: false)
        #expect(bus.acknowledgeInterrupt(vcpu: 0) == 0x0F)
    }

    @Test("level-triggered inputs (ELCR) request while high; auto-EOI leaves ISR empty")
    func levelAndAutoEOI() {
        let pic = initialized(autoEOI: true)
        pic.portWrite(0x4D0, size: 1, value: 0x20)   // IRQ 5 level-triggered
        #expect(pic.portRead(0x4D0, size: 1) == 0x20)
        pic.portWrite(0x4D0, size: 1, value: 0x07)   // IRQ 0-2 cannot be level-triggered
        #expect(pic.portRead(0x4D0, size: 1) == 0x00)
        pic.portWrite(0x4D0, size: 1, value: 0x20)
        pic.setLine(5, high: true)
        #expect(pic.acknowledgeInterrupt(vcpu: 0) == 0x0D)
        pic.portWrite(0x20, size: 1, value: 0x0B)
        #expect(pic.portRead(0x20, size: 1) == 0, "auto-EOI")
        #expect(pic.hasPendingInterrupt(vcpu: 0), "the line is still high")
        pic.setLine(5, high: false)
        #expect(!pic.hasPendingInterrupt(vcpu: 0))
    }

    @Test("poll mode: reading the command port acknowledges and reports the level")
    func poll() {
        let pic = initialized()
        pic.setLine(6, high: true)
        pic.portWrite(0x20, size: 1, value: 0x0C)   // OCW3: poll
        #expect(pic.portRead(0x20, size: 1) == 0x86)
        pic.portWrite(0x20, size: 1, value: 0x0C)
        #expect(pic.portRead(0x20, size: 1) == 0x00, "nothing else pending (IRQ 6 in service)")
    }

    @Test("a real-mode guest takes COM1's transmitter-empty interrupts through the PIC", arguments: backends())
    func uartInterruptsThroughPIC(backend: BackendKind) throws {
        let r = try runImage(try assemble("""
        bits 16
        org 0x7c00
                cli
                xor ax, ax
                mov ds, ax
                mov ss, ax
                mov sp, 0x7c00
                mov word [0x0C * 4], handler   ; IRQ 4 = vector 0x08 + 4
                mov word [0x0C * 4 + 2], 0
                mov al, 0x11                   ; ICW1: cascade, edge, ICW4
                out 0x20, al
                out 0xA0, al
                mov al, 0x08                   ; ICW2: vectors 0x08 and 0x70, as a BIOS sets them
                out 0x21, al
                mov al, 0x70
                out 0xA1, al
                mov al, 0x04                   ; ICW3: slave on IRQ 2
                out 0x21, al
                mov al, 0x02
                out 0xA1, al
                mov al, 0x01                   ; ICW4: 8086 mode
                out 0x21, al
                out 0xA1, al
                mov al, 0xEF                   ; only IRQ 4 unmasked
                out 0x21, al
                mov al, 0xFF
                out 0xA1, al
                mov dx, 0x3FC                  ; MCR: OUT2 gates the UART's interrupt
                mov al, 0x08
                out dx, al
                mov dx, 0x3F9                  ; IER: transmitter empty
                mov al, 0x02
                out dx, al
                sti
        .wait:  cmp byte [count], 3
                jb .wait
                cli
                mov al, 0x0B                   ; OCW3: read ISR
                out 0x20, al
                in al, 0x20
                test al, al
                jnz .bad
                mov al, 10
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        .bad:   mov al, 1
                out 0xf4, al
        handler:
                push ax
                push dx
                mov dx, 0x3FA                  ; IIR: reading it acknowledges the THRE interrupt
                in al, dx
                inc byte [count]
                mov al, 'I'
                out 0xe9, al
                cmp byte [count], 3
                jae .done
                mov dx, 0x3F8                  ; a byte to transmit: THR empties again, IRQ 4 again
                mov al, '.'
                out dx, al
        .done:  mov al, 0x20                   ; non-specific EOI
                out 0x20, al
                pop dx
                pop ax
                iret
        count:  db 0
        """), backend: backend, name: "pic-uart.bin", timeout: 20)
        #expect(r.output == "I.I.I\n", "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }
}
