//! Tests of `output.rs`: frames cut anywhere, a reply read together with its progress, the reading on the
//! runtime, and the reading moving between the supervisor thread and the runtime without losing a byte.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::sync::mpsc;

use plugin_api::Outcome;

use super::output::{Frames, Handback, Output, Wake};
use crate::isolation::protocol::{encode_frame, FromChild, MAX_FRAME};

/// A pipe: (read end, write end).
fn pipe() -> (File, File) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors, owned by the files below alone.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Bytes written to the pipe whose write end is `fd` and not yet read.
fn unread(fd: &File) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int for a descriptor we own.
    assert_eq!(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) },
        0
    );
    n
}

/// Writes `bytes` and waits until the reader has taken them all, so the next write comes in a read of its own.
fn write_and_wait_read(writer: &mut File, bytes: &[u8]) {
    writer.write_all(bytes).unwrap();
    while unread(writer) > 0 {
        std::thread::yield_now();
    }
}

/// A job's life as the child writes it: two progress values, a log line, the outcome.
fn job_frames(id: u64) -> Vec<FromChild> {
    vec![
        FromChild::Progress {
            id,
            json: "25".into(),
        },
        FromChild::Progress {
            id,
            json: r#"{"step":"half"}"#.into(),
        },
        FromChild::JobLog {
            id,
            line: "line 1".into(),
        },
        FromChild::Outcome {
            id,
            outcome: Outcome::completed(serde_json::json!({ "done": true })),
        },
    ]
}

fn wire(frames: &[FromChild]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| encode_frame(f).unwrap())
        .collect()
}

/// Messages compared by their debug text (the protocol's types need no `PartialEq`).
fn texts(frames: &[FromChild]) -> Vec<String> {
    frames.iter().map(|f| format!("{f:?}")).collect()
}

fn drain(frames: &mut Frames) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(msg) = frames.next().unwrap() {
        out.push(format!("{msg:?}"));
    }
    out
}

#[test]
fn frames_split_at_any_byte_come_out_whole_and_in_order() {
    let sent: Vec<FromChild> = job_frames(1).into_iter().chain(job_frames(2)).collect();
    let bytes = wire(&sent);
    for cut in 0..=bytes.len() {
        let mut frames = Frames::default();
        frames.extend(&bytes[..cut]);
        let mut got = drain(&mut frames);
        frames.extend(&bytes[cut..]);
        got.extend(drain(&mut frames));
        assert_eq!(got, texts(&sent), "cut at {cut}");
    }
    // One byte per read.
    let mut frames = Frames::default();
    let mut got = Vec::new();
    for b in &bytes {
        frames.extend(std::slice::from_ref(b));
        got.extend(drain(&mut frames));
    }
    assert_eq!(got, texts(&sent));
}

#[test]
fn a_reply_read_together_with_its_progress_comes_after_it() {
    let sent = job_frames(7);
    let mut frames = Frames::default();
    frames.extend(&wire(&sent));
    let got = drain(&mut frames);
    assert_eq!(got, texts(&sent));
    assert!(got.last().unwrap().starts_with("Outcome"), "{got:?}");
}

#[test]
fn oversized_and_garbled_frames_break_the_stream() {
    let mut frames = Frames::default();
    frames.extend(&((MAX_FRAME + 1) as u32).to_be_bytes());
    assert!(frames.next().is_err());
    let mut frames = Frames::default();
    frames.extend(&[0, 0, 0, 2, b'{', b'x']);
    assert!(frames.next().is_err());
}

/// Reads `reader` on a fresh current-thread runtime until the output ends; returns what was dispatched and
/// what came back.
fn read_on_runtime(reader: Output<File>) -> (Vec<String>, Handback<File>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (back, handed) = mpsc::channel();
    let (seen, dispatched) = mpsc::channel();
    rt.block_on(reader.read_on_runtime(back, move |msg| seen.send(format!("{msg:?}")).unwrap()));
    (dispatched.try_iter().collect(), handed.recv().unwrap())
}

#[test]
fn on_the_runtime_frames_written_in_pieces_are_dispatched_in_order_until_a_clean_end() {
    let (reader, mut writer) = pipe();
    let sent: Vec<FromChild> = job_frames(1).into_iter().chain(job_frames(2)).collect();
    let bytes = wire(&sent);
    let child = std::thread::spawn(move || {
        // Pieces that cut lengths and bodies alike, each read on its own.
        for piece in bytes.chunks(3).collect::<Vec<_>>().chunks(5) {
            write_and_wait_read(&mut writer, &piece.concat());
        }
    });
    let (got, back) = read_on_runtime(Output::new(reader).unwrap());
    child.join().unwrap();
    assert_eq!(got, texts(&sent));
    assert!(matches!(back.ended, Some(Ok(()))), "{:?}", back.ended);
}

#[test]
fn on_the_runtime_an_output_cut_inside_a_frame_is_broken() {
    let (reader, mut writer) = pipe();
    let sent = job_frames(3);
    let mut bytes = wire(&sent);
    bytes.truncate(bytes.len() - 2);
    writer.write_all(&bytes).unwrap();
    drop(writer);
    let (got, back) = read_on_runtime(Output::new(reader).unwrap());
    // Everything before the cut frame was dispatched.
    assert_eq!(got, texts(&sent[..3]));
    assert!(matches!(back.ended, Some(Err(_))), "{:?}", back.ended);
}

#[test]
fn the_reading_moves_from_the_thread_to_the_runtime_between_reads_without_losing_a_byte() {
    let (reader, mut writer) = pipe();
    let sent = job_frames(4);
    let bytes = wire(&sent);
    let first = encode_frame(&sent[0]).unwrap().len();
    // The first frame and half the second arrive while the thread reads.
    let half = first + (bytes.len() - first) / 5;
    writer.write_all(&bytes[..half]).unwrap();
    let wake = Wake::new().unwrap();
    let mut output = Output::new(reader).unwrap();
    let mut on_thread = Vec::new();
    // A runtime is attached once the thread dispatched the first frame.
    let woken = output.read_on_thread(&wake, &mut |msg| {
        on_thread.push(format!("{msg:?}"));
        wake.ring();
    });
    assert!(woken.is_none(), "{woken:?}");
    assert_eq!(on_thread, texts(&sent[..1]));
    writer.write_all(&bytes[half..]).unwrap();
    drop(writer);
    let (on_runtime, back) = read_on_runtime(output);
    assert_eq!(on_runtime, texts(&sent[1..]));
    assert!(matches!(back.ended, Some(Ok(()))), "{:?}", back.ended);
}

#[test]
fn a_runtime_shut_down_while_reading_hands_the_output_back_to_the_thread() {
    let (reader, mut writer) = pipe();
    let sent = job_frames(5);
    let bytes = wire(&sent);
    let half = encode_frame(&sent[0]).unwrap().len() + 5;
    writer.write_all(&bytes[..half]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (back, handed) = mpsc::channel();
    let (seen, mut dispatched) = tokio::sync::mpsc::unbounded_channel();
    rt.spawn(
        Output::new(reader)
            .unwrap()
            .read_on_runtime(back, move |msg| seen.send(format!("{msg:?}")).unwrap()),
    );
    let first = rt.block_on(dispatched.recv()).unwrap();
    assert_eq!(vec![first], texts(&sent[..1]));
    // The half frame already read stays with the output.
    while unread(&writer) > 0 {
        rt.block_on(tokio::task::yield_now());
    }
    drop(rt);
    let Handback { mut output, ended } = handed.recv().unwrap();
    assert!(ended.is_none(), "{ended:?}");
    writer.write_all(&bytes[half..]).unwrap();
    drop(writer);
    let wake = Wake::new().unwrap();
    let mut on_thread = Vec::new();
    let ended = output.read_on_thread(&wake, &mut |msg| on_thread.push(format!("{msg:?}")));
    assert!(matches!(ended, Some(Ok(()))), "{ended:?}");
    assert_eq!(on_thread, texts(&sent[1..]));
}
