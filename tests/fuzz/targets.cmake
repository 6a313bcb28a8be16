# The fuzz targets: one source each under tests/fuzz, named fuzz_<what>.cpp,
# with its seed corpus in tests/fuzz/corpus/<target>/ and the inputs that
# once crashed it in tests/fuzz/regressions/<target>/. Both builds read
# this list: the fuzz build (tests/fuzz/CMakeLists.txt) makes each a
# libFuzzer binary; the normal build (tests/fuzz/fuzz_tests.cmake) replays
# every corpus and regression input through all of them in one GoogleTest.
set(vesicle_fuzz_targets
  fuzz_frame_decoder  # messages/framing.cpp: the agent channel's frames
  fuzz_guest_event    # guest::Event from the guest -> hostd/ndjson.cpp lines
  fuzz_dns            # net/dns.cpp and net/dns_policy.cpp
  fuzz_peek_tls       # net/peek.cpp: SNI of a ClientHello
  fuzz_peek_http      # net/peek.cpp: Host of an HTTP/1.x request head
  fuzz_query          # hostd/query.cpp (URL decoding) and Space ids
  fuzz_api_json       # hostd/json.cpp: request bodies into api.proto
  fuzz_json           # vmm/json.cpp: MCP and QMP messages
  fuzz_mcp            # hostd/mcp.cpp: one MCP message, and base64 file contents
)
