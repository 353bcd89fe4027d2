//! The NDJSON bulk import's lines: `write::payload::parse_bulk_line` on every line of an
//! arbitrary body, split the way `write::bulk::import` splits it (on `\n`, the last line
//! without one included). That splitter lives inside the async `import`, which needs a
//! database, so it is not reachable here: this target repeats its splitting rule and
//! fuzzes what each line meets.
//!
//! Properties: no line panics; a refused line is a 4xx problem (the report's entry);
//! a line that parses has a positive id, a valid product, and re-serializes (with its
//! id) to a line that parses to the same; a CRLF line ending changes nothing.
#![no_main]

use catalog::write::payload::parse_bulk_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for line in body.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue; // blank lines are counted and skipped
        }
        let parsed = parse_bulk_line(line);
        let mut crlf = line.to_vec();
        crlf.push(b'\r');
        assert_eq!(
            parse_bulk_line(&crlf).is_ok(),
            parsed.is_ok(),
            "{:?} with and without CR",
            String::from_utf8_lossy(line)
        );
        match parsed {
            Ok((id, input)) => {
                assert!(id > 0);
                input.validate().expect("a parsed line is valid");
                let mut again = serde_json::to_value(&input).unwrap();
                again["id"] = id.into();
                let reparsed = parse_bulk_line(again.to_string().as_bytes());
                assert_eq!(reparsed.ok(), Some((id, input)));
            }
            Err(error) => {
                let problem = error.problem();
                assert!(problem.status.is_client_error(), "{error:?}");
            }
        }
    }
});
