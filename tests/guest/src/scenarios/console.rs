//! `console`: the virtio console (port 0, hvc0) next to COM1. Writes a
//! greeting on each, optionally floods hvc0 with `lines=N` numbered lines
//! (`line_ms=MS` apart),
//! prints `ready` on both (hvc0 last, so that dev-console routes typed
//! input there), reads one line typed on hvc0 and echoes it on
//! both. With `wait=1` it prints PASS and keeps running: an `alive` line on
//! hvc0 every second, and every further line typed on hvc0 is echoed too
//! (for detach/reattach tests).

use super::{Ctx, Reason, Scenario};
use crate::cpu;
use crate::virtio::console::{Console, MAX_LINE};

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "console",
    run,
};

/// How long to wait for the typed line when `timeout=` gives no bound.
const DEFAULT_TIMEOUT_S: u64 = 60;
/// Period of the `alive` lines with `wait=1`.
const ALIVE_MS: u64 = 1000;

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let name = ctx.name;
    let lines = ctx.number("lines", 0)?;
    let timeout_ms = match ctx.boot.arg("timeout").map(str::parse::<u64>) {
        None => Some(DEFAULT_TIMEOUT_S * 1000),
        Some(Ok(0)) => None,
        Some(Ok(s)) => Some(s.saturating_mul(1000)),
        Some(Err(_)) => crate::fail!("timeout= takes a number of seconds (0: none)"),
    };
    let line_ms = ctx.number("line_ms", 0)?;
    let wait = ctx.boot.arg("wait").is_some_and(|v| v != "0");
    let mut con = Console::open(ctx.boot)
        .map_err(|r| Reason::new(format_args!("virtio console: {}", r.as_str())))?;
    let func = con.t.func;
    let (rx_size, tx_size) = con.queue_sizes();
    crate::println!(
        "VMDT {name} device={func} id={:04x}:{:04x} offered={:#x} features={:#x} queues={} rx_size={rx_size} tx_size={tx_size}",
        func.vendor,
        func.device,
        con.offered,
        con.features,
        con.t.num_queues(),
    );
    con.write(b"VMDT console hvc=hello-from-hvc0\n")?;
    crate::println!("VMDT {name} com1=hello-from-com1");
    if lines > 0 {
        let tsc_ms = cpu::tsc_per_ms();
        let began = cpu::rdtsc();
        for k in 0..lines {
            if line_ms > 0 && k > 0 {
                cpu::wait_until(cpu::Deadline::after_ms(line_ms), || false);
            }
            con.send_line(format_args!("VMDT {name} n={k}"))?;
        }
        con.flush()?;
        crate::println!(
            "VMDT {name} lines={lines} ms={}",
            (cpu::rdtsc() - began) / tsc_ms
        );
    }
    // COM1 first, hvc0 last: the console sends typed input to whichever
    // wrote last, as a getty's prompt is the last thing its terminal shows.
    // COM1 reaches dev-console through one more hop (the monitor) than
    // hvc0: let it arrive first.
    crate::println!("VMDT {name} ready");
    settle();
    con.write_line(format_args!("VMDT {name} ready"))?;
    con.read_line(timeout_ms)?;
    echo(ctx, &mut con)?;
    if !wait {
        return Ok(());
    }
    super::print_pass(ctx);
    // The PASS line went out on COM1, one hop longer than hvc0: the first
    // `alive` line waits a period, so that it cannot land inside it.
    let tsc_ms = cpu::tsc_per_ms();
    let mut next = cpu::rdtsc() + ALIVE_MS * tsc_ms;
    let mut n = 0u64;
    loop {
        if cpu::rdtsc() >= next {
            // A reader that stopped draining hvc0 must not stop the loop:
            // without a free buffer the line is skipped (its number too).
            if con.can_send()? {
                con.send_line(format_args!("VMDT {name} alive n={n}"))?;
            }
            n += 1;
            next += ALIVE_MS * tsc_ms;
        }
        if con.try_read_line()?.is_some() {
            echo(ctx, &mut con)?;
        }
        core::hint::spin_loop();
    }
}

/// Prints the line just read as `echo=<line>` on hvc0 and COM1 (bytes
/// outside printable ASCII, spaces included, as `_`).
fn echo(ctx: &Ctx, con: &mut Console) -> Result<(), Reason> {
    let mut text = [0u8; MAX_LINE];
    let line = con.line();
    let len = line.len();
    for (dst, &b) in text.iter_mut().zip(line) {
        *dst = if b.is_ascii_graphic() { b } else { b'_' };
    }
    let text = core::str::from_utf8(&text[..len]).unwrap_or("?");
    // hvc0 last, where the next line is read.
    crate::println!("VMDT {} echo={text}", ctx.name);
    settle();
    con.write_line(format_args!("VMDT {} echo={text}", ctx.name))?;
    Ok(())
}

/// Lets COM1 output, which travels through the monitor, reach the console
/// before the hvc0 line that follows it (so hvc0 is the last writer).
fn settle() {
    cpu::wait_until(cpu::Deadline::after_ms(SETTLE_MS), || false);
}

/// How long [`settle`] waits.
const SETTLE_MS: u64 = 250;
