// The snapshot manifest and checksums, without a VM.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "common/unique_fd.hpp"
#include "tests/vmm/test_support.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle::test {
using vesicle::UniqueFd;
namespace {

namespace fs = std::filesystem;
using vmm::snapshot::Manifest;

Manifest sample() {
  Manifest m;
  m.vcpus = 2;
  m.memory_mib = 512;
  m.accel = vmm::Accel::tcg;
  m.network = true;
  m.kernel = "/images/vmlinuz";
  m.initrd = "/images/initrd.img";
  m.base_disk = "/images/with space/rootfs.ext4";
  m.cmdline = "console=ttyS0 root=/dev/vda rw quiet panic=-1 tsc_early_khz=2100000 tsc=reliable";
  m.state = {4096, 4096, std::string(64, 'a')};
  m.disk = {196616, 196616, std::string(64, 'b')};
  m.memory = {512ull << 20, 90ull << 20, std::string(64, 'c')};
  m.memory_file = "/dev/shm/vesicle snapshots/t.mem";
  return m;
}

// Replaces line `index` (0-based) of the text.
std::string with_line(std::string text, std::size_t index, const std::string& line) {
  std::size_t start = 0;
  for (std::size_t i = 0; i < index; ++i)
    start = text.find('\n', start) + 1;
  const auto end = text.find('\n', start);
  return text.replace(start, end - start, line);
}

std::string parse_error(const std::string& text) {
  auto parsed = vmm::snapshot::parse_manifest(text);
  return parsed ? std::string("(parsed)") : parsed.error().message();
}

TEST(SnapshotManifest, RoundTrips) {
  const Manifest m = sample();
  const std::string text = vmm::snapshot::format_manifest(m);
  auto parsed = vmm::snapshot::parse_manifest(text);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(parsed->vcpus, 2u);
  EXPECT_EQ(parsed->memory_mib, 512u);
  EXPECT_EQ(parsed->accel, vmm::Accel::tcg);
  EXPECT_TRUE(parsed->network);
  EXPECT_EQ(parsed->base_disk, m.base_disk);
  EXPECT_EQ(parsed->cmdline, m.cmdline);
  EXPECT_EQ(parsed->state.size, 4096u);
  EXPECT_EQ(parsed->state.sha256, m.state.sha256);
  EXPECT_EQ(parsed->disk.sha256, m.disk.sha256);
  EXPECT_EQ(parsed->memory.size, 512ull << 20);
  EXPECT_EQ(parsed->memory.data_bytes, 90ull << 20);
  EXPECT_EQ(parsed->memory.sha256, m.memory.sha256);
  EXPECT_EQ(parsed->memory_file, m.memory_file);
  EXPECT_EQ(vmm::snapshot::format_manifest(*parsed), text);
}

TEST(SnapshotManifest, RefusesAnotherVersion) {
  const std::string text =
      with_line(vmm::snapshot::format_manifest(sample()), 0, "vesicle-snapshot 2");
  const std::string error = parse_error(text);
  EXPECT_NE(error.find("format version 2, this build reads version 1"), std::string::npos) << error;
  EXPECT_NE(error.find("rebuilt"), std::string::npos) << error;
}

TEST(SnapshotManifest, RefusesWhatIsNotAManifest) {
  EXPECT_NE(parse_error("").find("empty"), std::string::npos);
  EXPECT_NE(parse_error("hello\n").find("not a vesicle snapshot manifest"), std::string::npos);
  const std::string text = vmm::snapshot::format_manifest(sample());
  // Cut short: in the middle of a line, and at a line boundary.
  EXPECT_NE(parse_error(text.substr(0, text.size() - 10)).find("middle of a line"),
            std::string::npos);
  // Without its last three lines (the last two alone are the "pit" and
  // "vcpu_sockets" lines, which older manifests lack: below).
  std::string whole_lines = text;
  for (int i = 0; i < 3; ++i)
    whole_lines = whole_lines.substr(0, whole_lines.rfind('\n', whole_lines.size() - 2) + 1);
  EXPECT_NE(parse_error(whole_lines).find("has 11 lines"), std::string::npos)
      << parse_error(whole_lines);
}

// Manifests written before the machine went without the legacy PIT have no
// "pit" line: their VMs are restored with one, or the device state would not
// load. Ours say which.
TEST(SnapshotManifest, SaysWhetherTheMachineHadThePit) {
  Manifest m = sample();
  const std::string text = vmm::snapshot::format_manifest(m);
  ASSERT_TRUE(text.ends_with("\npit 0\nvcpu_sockets 0\n")) << text;
  auto parsed = vmm::snapshot::parse_manifest(text);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_FALSE(parsed->pit);

  m.pit = true;
  parsed = vmm::snapshot::parse_manifest(vmm::snapshot::format_manifest(m));
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_TRUE(parsed->pit);

  const std::string older =
      text.substr(0, text.size() - std::string("pit 0\nvcpu_sockets 0\n").size());
  parsed = vmm::snapshot::parse_manifest(older);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_TRUE(parsed->pit);
  EXPECT_EQ(parsed->cmdline, m.cmdline);

  const std::string error = parse_error(with_line(text, 12, "pit yes"));
  EXPECT_NE(error.find("line 13: expected \"pit 0\" or \"pit 1\""), std::string::npos) << error;
}

// A TCG guest's vCPUs are sockets of their own since vcpu_sockets came in;
// manifests written before have no such line, and their vCPUs were cores of
// one socket. A VM restored from a snapshot gets the topology it booted with.
TEST(SnapshotManifest, SaysWhetherEachVcpuWasASocket) {
  Manifest m = sample();
  m.vcpu_sockets = true;
  const std::string text = vmm::snapshot::format_manifest(m);
  ASSERT_TRUE(text.ends_with("\nvcpu_sockets 1\n")) << text;
  auto parsed = vmm::snapshot::parse_manifest(text);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_TRUE(parsed->vcpu_sockets);
  EXPECT_FALSE(parsed->pit);

  m.vcpu_sockets = false;
  parsed = vmm::snapshot::parse_manifest(vmm::snapshot::format_manifest(m));
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_FALSE(parsed->vcpu_sockets);

  // The format before: a "pit" line and no "vcpu_sockets".
  const std::string older = text.substr(0, text.size() - std::string("vcpu_sockets 1\n").size());
  parsed = vmm::snapshot::parse_manifest(older);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_FALSE(parsed->vcpu_sockets);
  EXPECT_FALSE(parsed->pit);

  const std::string error = parse_error(with_line(text, 13, "vcpu_sockets 2"));
  EXPECT_NE(error.find("line 14: expected \"vcpu_sockets 0\" or \"vcpu_sockets 1\""),
            std::string::npos)
      << error;
  // Too many lines.
  EXPECT_NE(parse_error(text + "extra 1\n").find("has 15 lines"), std::string::npos)
      << parse_error(text + "extra 1\n");
}

TEST(SnapshotManifest, RefusesBadFields) {
  const std::string text = vmm::snapshot::format_manifest(sample());
  struct Case {
    std::size_t line;
    std::string replacement;
    std::string expected;
  };
  const Case cases[] = {
      {1, "vcpus two", "not a number: two"},
      {1, "vcpus 0", "vcpus out of range"},
      {2, "memory_mib 256", "does not match memory_mib"},
      {3, "accel hvf", "unknown accelerator hvf"},
      {4, "network yes", "network is 0 or 1"},
      {5, "kernel images/vmlinuz", "kernel is not an absolute path"},
      {6, "vcpus 2", "line 7: expected \"initrd ...\""},
      {9, "state 4096 abc", "not a sha256: abc"},
      {9, "state 4096 " + std::string(64, 'A'), "not a sha256"},
      {10, "disk -1 " + std::string(64, 'b'), "not a number: -1"},
      {11, "memory 1 2 " + std::string(64, 'c'),
       "expected \"<size> <data bytes> <sha256> <path>\""},
      {11, "memory 536870912 1 " + std::string(64, 'c') + " relative.mem", "not an absolute path"},
  };
  for (const auto& c : cases) {
    const std::string error = parse_error(with_line(text, c.line, c.replacement));
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.replacement << " gave: " << error;
  }
}

TEST(SnapshotDigest, SparseDigestCoversDataAndTheExtentMap) {
  TempDir dir;
  const fs::path a = dir.path() / "a", b = dir.path() / "b";
  auto make = [](const fs::path& path, off_t data_at) {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::ftruncate(fd.get(), 4 << 20), 0);
    const std::string data(64 << 10, 'z');
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), data_at),
              static_cast<ssize_t>(data.size()));
  };
  make(a, 1 << 20);
  make(b, 2 << 20); // the same bytes, elsewhere
  auto da = vmm::snapshot::digest_sparse_file(a);
  auto db = vmm::snapshot::digest_sparse_file(b);
  ASSERT_TRUE(da && db);
  EXPECT_EQ(da->size, 4u << 20);
  EXPECT_EQ(da->data_bytes, 64u << 10);
  EXPECT_NE(da->sha256, db->sha256) << "moved data must change the digest";
  auto again = vmm::snapshot::digest_sparse_file(a);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->sha256, da->sha256);

  // Zeros written into a hole allocate it (as a restored VM's page fault on
  // a tmpfs hole does) without changing what the file holds: same digest.
  {
    UniqueFd fd(::open(a.c_str(), O_RDWR));
    const std::string zeros(8192, '\0');
    ASSERT_EQ(::pwrite(fd.get(), zeros.data(), zeros.size(), 3 << 20), 8192);
  }
  auto allocated = vmm::snapshot::digest_sparse_file(a);
  ASSERT_TRUE(allocated);
  EXPECT_EQ(allocated->sha256, da->sha256);

  // A flipped byte in the data changes it.
  {
    UniqueFd fd(::open(a.c_str(), O_RDWR));
    ASSERT_EQ(::pwrite(fd.get(), "y", 1, (1 << 20) + 100), 1);
  }
  auto flipped = vmm::snapshot::digest_sparse_file(a);
  ASSERT_TRUE(flipped);
  EXPECT_NE(flipped->sha256, da->sha256);

  // Dense and sparse digests of a file without holes agree on size.
  auto whole = vmm::snapshot::digest_file(a);
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->size, 4u << 20);
  EXPECT_EQ(whole->sha256.size(), 64u);
}

TEST(SnapshotDigest, MissingFileIsAnErrorNamingIt) {
  auto missing = vmm::snapshot::digest_sparse_file("/nonexistent/vesicle.mem");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().errno_value, ENOENT);
  EXPECT_NE(missing.error().message().find("/nonexistent/vesicle.mem"), std::string::npos);
}

TEST(SnapshotFiles, AtomicWriteLeavesNoTemporary) {
  TempDir dir;
  const fs::path target = dir.path() / "manifest";
  ASSERT_TRUE(vmm::snapshot::write_file_atomically(target, "one\n"));
  ASSERT_TRUE(vmm::snapshot::write_file_atomically(target, "two\n"));
  std::ifstream in(target);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "two\n");
  EXPECT_FALSE(fs::exists(dir.path() / "manifest.tmp"));
  auto refused = vmm::snapshot::write_file_atomically("/nonexistent/dir/manifest", "x");
  EXPECT_FALSE(refused);
}

TEST(SnapshotFiles, OpenNamesAMissingManifest) {
  TempDir dir;
  auto opened = vmm::open_snapshot(dir.path());
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message().find("manifest is missing"), std::string::npos)
      << opened.error().message();
}

TEST(SnapshotManifest, FullRamRoundTripsWithoutAMemoryFile) {
  Manifest m = sample();
  m.full_ram = true;
  m.memory = {};
  m.memory_file.clear();
  const std::string text = vmm::snapshot::format_manifest(m);
  EXPECT_NE(text.find("\nmemory in-state\n"), std::string::npos) << text;
  auto parsed = vmm::snapshot::parse_manifest(text);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_TRUE(parsed->full_ram);
  EXPECT_TRUE(parsed->memory_file.empty());
  EXPECT_EQ(parsed->state.sha256, m.state.sha256);
  EXPECT_EQ(vmm::snapshot::format_manifest(*parsed), text);
  // A template's manifest is not full.
  auto template_manifest = vmm::snapshot::parse_manifest(vmm::snapshot::format_manifest(sample()));
  ASSERT_TRUE(template_manifest);
  EXPECT_FALSE(template_manifest->full_ram);
}

// A full-RAM snapshot dir built by hand (the files' content is arbitrary:
// open() checks sizes and checksums, not what QEMU would make of them).
struct FullSnapshotDir {
  TempDir images;
  TempDir root;
  fs::path dir = root.path() / "space";

  FullSnapshotDir() {
    for (const auto* name : {"vmlinuz", "initrd.img", "rootfs.ext4"}) {
      std::ofstream(images.path() / name) << name;
    }
    fs::create_directory(dir);
    std::ofstream(dir / "state", std::ios::binary) << random_bytes(3 << 20, 7);
    std::ofstream(dir / "disk.qcow2", std::ios::binary) << random_bytes(1 << 20, 8);
    Manifest m = sample();
    m.network = false;
    m.full_ram = true;
    m.memory = {};
    m.memory_file.clear();
    m.kernel = images.path() / "vmlinuz";
    m.initrd = images.path() / "initrd.img";
    m.base_disk = images.path() / "rootfs.ext4";
    m.state = vmm::snapshot::digest_file(dir / "state").value();
    m.disk = vmm::snapshot::digest_file(dir / "disk.qcow2").value();
    EXPECT_TRUE(
        vmm::snapshot::write_file_atomically(dir / "manifest", vmm::snapshot::format_manifest(m)));
  }
};

TEST(SnapshotFiles, OpensAFullSnapshotAndRefusesItDamaged) {
  {
    FullSnapshotDir full;
    auto opened = vmm::open_snapshot(full.dir);
    ASSERT_TRUE(opened) << opened.error().message();
    EXPECT_TRUE(opened->full_ram);
    EXPECT_TRUE(opened->memory_file.empty());
    EXPECT_EQ(opened->disk, full.dir / "disk.qcow2");
    EXPECT_EQ(opened->vcpus, 2u);
  }
  {
    FullSnapshotDir full;
    ASSERT_EQ(::truncate((full.dir / "state").c_str(), (3 << 20) - 1), 0);
    auto refused = vmm::open_snapshot(full.dir);
    ASSERT_FALSE(refused);
    const std::string message = refused.error().message();
    EXPECT_NE(message.find("device state"), std::string::npos) << message;
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  }
  {
    FullSnapshotDir full;
    UniqueFd fd(::open((full.dir / "state").c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd);
    char byte = 0;
    ASSERT_EQ(::pread(fd.get(), &byte, 1, 2 << 20), 1);
    byte ^= 1;
    ASSERT_EQ(::pwrite(fd.get(), &byte, 1, 2 << 20), 1);
    auto refused = vmm::open_snapshot(full.dir);
    ASSERT_FALSE(refused);
    const std::string message = refused.error().message();
    EXPECT_NE(message.find("device state does not match its sha256"), std::string::npos) << message;
  }
  {
    FullSnapshotDir full;
    fs::remove(full.dir / "disk.qcow2"); // what restore_full leaves: a spent snapshot
    auto refused = vmm::open_snapshot(full.dir);
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message().find("disk is missing"), std::string::npos)
        << refused.error().message();
  }
}

// A Space saved from a pool VM has a disk backed by the template snapshot's
// disk; with that gone the snapshot cannot be resumed, and open says so.
TEST(SnapshotFiles, OpenRefusesAFullSnapshotWhoseDiskChainIsBroken) {
  FullSnapshotDir full;
  const fs::path template_disk = full.root.path() / "template-disk.qcow2";
  const std::string base = (full.images.path() / "rootfs.ext4").string();
  const std::string make_template =
      "qemu-img create -q -f qcow2 -b '" + base + "' -F raw '" + template_disk.string() + "' 1M";
  ASSERT_EQ(std::system(make_template.c_str()), 0) << make_template;
  fs::remove(full.dir / "disk.qcow2");
  const std::string make_disk = "qemu-img create -q -f qcow2 -b '" + template_disk.string() +
                                "' -F qcow2 '" + (full.dir / "disk.qcow2").string() + "'";
  ASSERT_EQ(std::system(make_disk.c_str()), 0) << make_disk;
  auto backing = vmm::snapshot::qcow2_backing_file(full.dir / "disk.qcow2");
  ASSERT_TRUE(backing) << backing.error().message();
  EXPECT_EQ(*backing, template_disk);
  // The manifest must name the new disk's checksum for open to get that far.
  auto manifest = vmm::snapshot::parse_manifest([&] {
    std::ifstream in(full.dir / "manifest");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }());
  ASSERT_TRUE(manifest);
  manifest->disk = vmm::snapshot::digest_file(full.dir / "disk.qcow2").value();
  ASSERT_TRUE(vmm::snapshot::write_file_atomically(full.dir / "manifest",
                                                   vmm::snapshot::format_manifest(*manifest)));
  ASSERT_TRUE(vmm::open_snapshot(full.dir));

  fs::remove(template_disk);
  auto refused = vmm::open_snapshot(full.dir);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("which is gone"), std::string::npos)
      << refused.error().message();
  EXPECT_EQ(refused.error().errno_value, ENOENT);
}

std::uint64_t allocated(const fs::path& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// On tmpfs, as RAM files are: what the migration's zero-page scan faults in
// is zero-filled pages the file then holds.
TEST(SnapshotFiles, PunchZeroPagesFreesZerosAndKeepsContent) {
  TempDir shm("/dev/shm", "vesicle-punch");
  const fs::path file = shm.path() / "ram";
  {
    UniqueFd fd(::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::ftruncate(fd.get(), 8 << 20), 0);
    const std::string data = random_bytes(4096, 1), zeros(2 << 20, '\0');
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 0), 4096);
    ASSERT_EQ(::pwrite(fd.get(), zeros.data(), zeros.size(), 1 << 20), 2 << 20);
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), (3 << 20) + 8192), 4096);
  }
  auto before = vmm::snapshot::digest_sparse_file(file);
  ASSERT_TRUE(before);
  EXPECT_GE(allocated(file), std::uint64_t{2 << 20});
  auto freed = vmm::snapshot::punch_zero_pages(file);
  ASSERT_TRUE(freed) << freed.error().message();
  EXPECT_EQ(*freed, std::uint64_t{2 << 20});
  EXPECT_EQ(allocated(file), std::uint64_t{8192});
  auto after = vmm::snapshot::digest_sparse_file(file);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->sha256, before->sha256);
  EXPECT_EQ(fs::file_size(file), std::uint64_t{8 << 20});
}

TEST(SnapshotFiles, HoleRangesThenPunchRangesRestoresTheExtentMap) {
  TempDir shm("/dev/shm", "vesicle-punch");
  const fs::path file = shm.path() / "template";
  const std::string data = random_bytes(4096, 2);
  {
    UniqueFd fd(::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::ftruncate(fd.get(), 1 << 20), 0);
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 65536), 4096);
  }
  auto holes = vmm::snapshot::hole_ranges(file);
  ASSERT_TRUE(holes) << holes.error().message();
  const vmm::snapshot::Ranges expected = {{0, 65536}, {65536 + 4096, 1 << 20}};
  EXPECT_EQ(*holes, expected);
  // Fill the holes with zeros (as read faults do), then give them back.
  {
    UniqueFd fd(::open(file.c_str(), O_RDWR | O_CLOEXEC));
    const std::string zeros(1 << 20, '\0');
    ASSERT_EQ(::pwrite(fd.get(), zeros.data(), 65536, 0), 65536);
    ASSERT_EQ(::pwrite(fd.get(), zeros.data(), (1 << 20) - 65536 - 4096, 65536 + 4096),
              (1 << 20) - 65536 - 4096);
  }
  EXPECT_EQ(allocated(file), std::uint64_t{1 << 20});
  ASSERT_TRUE(vmm::snapshot::punch_ranges(file, *holes));
  EXPECT_EQ(allocated(file), std::uint64_t{4096});
  auto again = vmm::snapshot::hole_ranges(file);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, expected);
}

} // namespace
} // namespace vesicle::test
