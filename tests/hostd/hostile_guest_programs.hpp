// Programs a hostile guest runs (bash, as root in the guest), shared by the
// hostile-guest test and the soak, and the exec body that carries them.
#pragma once

#include <string>

namespace vesicle::testing {

inline std::string exec_body(const std::string& language, const std::string& code,
                             unsigned timeout_s) {
  std::string escaped;
  for (char c : code) {
    if (c == '"' || c == '\\') escaped += '\\';
    if (c == '\n') {
      escaped += "\\n";
      continue;
    }
    escaped += c;
  }
  return R"({"language": ")" + language + R"(", "timeout_s": )" + std::to_string(timeout_s) +
         R"(, "code": ")" + escaped + "\"}";
}

// The hostile guests' programs (bash, in the guest, as root). Each is
// bounded in time so the soak ends; each exec repeats it while the soak runs.
inline constexpr const char* kOutputFlood =
    "yes 'flooding the output of this exec' | head -c 400000000";
inline constexpr const char* kFdFlood =
    "python3 -c \"\nimport os, resource, socket\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))\nheld = []\n"
    "try:\n  while len(held) < 60000: held.append(socket.socket())\nexcept OSError: pass\n"
    "print(len(held))\"";
inline constexpr const char* kMemoryBomb =
    "python3 -c \"\nheld = []\nwhile True: held.append(bytearray(16 << 20))\" ; echo oom";
inline constexpr const char* kForkBomb =
    "timeout -s KILL 4 bash -c 'b() { b | b & }; b' 2>/dev/null; sleep 1; echo survived";

// Takes PID 1's end of the agent channel (pidfd_getfd) and writes empty
// frames into it as fast as the port takes them: events for a request the
// host never sent, a flood past anything hostd would hold.
inline constexpr const char* kChannelFlood =
    "cat > /tmp/flood.py <<'EOF'\n"
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "port = [int(n) for n in os.listdir('/proc/1/fd')\n"
    "        if os.readlink('/proc/1/fd/' + n).startswith('/dev/vport')][0]\n"
    "pidfd = libc.syscall(434, 1, 0)\n"
    "fd = libc.syscall(438, pidfd, port, 0)\n"
    "assert fd >= 0, ctypes.get_errno()\n"
    "zeros = bytes(1 << 16)\n"
    "while True: os.write(fd, zeros)\n"
    "EOF\n"
    "(sleep 1; python3 /tmp/flood.py) >/tmp/flood.log 2>&1 </dev/null &\n"
    "echo armed";

} // namespace vesicle::testing
