// Saved templates' files: their format, names, the store's view of its
// directory (unfinished saves), and what a key's templates cost.
#include "actors/sandbox/template_store.hpp"

#include <gtest/gtest.h>

#include "tests/hostd/retrying_temp_dir.hpp"

namespace vesicle {
namespace {

namespace fs = std::filesystem;

TemplateInfo sample(const std::string& owner, const std::string& name) {
  TemplateInfo info;
  info.template_id = new_template_id();
  info.name = name;
  info.owner = owner;
  info.global = true;
  info.from_sandbox = "sb-0123456789abcdef0123456789abcdef";
  info.created_at_ms = 1700000000123;
  info.vcpus = 2;
  info.memory_mib = 512;
  info.disk_mib = 2048;
  info.images_fingerprint = "a1b2c3d4e5f6";
  info.recipe_hash = "sha256:00ff";
  info.pool_size = 3;
  info.memory_bytes = 200u << 20;
  info.state_bytes = 1u << 20;
  info.disk_bytes = 30u << 20;
  return info;
}

TEST(TemplateFile, RoundTripsEveryField) {
  const auto info = sample("key-1", "pandas-ml");
  auto parsed = parse_template(format_template(info));
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(parsed->template_id, info.template_id);
  EXPECT_EQ(parsed->name, "pandas-ml");
  EXPECT_EQ(parsed->owner, "key-1");
  EXPECT_TRUE(parsed->global);
  EXPECT_EQ(parsed->from_sandbox, info.from_sandbox);
  EXPECT_EQ(parsed->created_at_ms, info.created_at_ms);
  EXPECT_EQ(parsed->vcpus, 2u);
  EXPECT_EQ(parsed->memory_mib, 512u);
  EXPECT_EQ(parsed->disk_mib, 2048u);
  EXPECT_EQ(parsed->images_fingerprint, info.images_fingerprint);
  EXPECT_EQ(parsed->recipe_hash, "sha256:00ff");
  EXPECT_EQ(parsed->pool_size, 3u);
  EXPECT_EQ(parsed->memory_bytes, info.memory_bytes);
  EXPECT_EQ(parsed->state_bytes, info.state_bytes);
  EXPECT_EQ(parsed->disk_bytes, info.disk_bytes);
}

TEST(TemplateFile, BadFilesNameTheLine) {
  auto text = format_template(sample("k", "x"));
  auto wrong_version = parse_template("vesicle-template 9\n");
  ASSERT_FALSE(wrong_version);
  EXPECT_NE(wrong_version.error().message().find("another version"), std::string::npos);
  auto bad_number = parse_template(text + "vcpus two\n");
  ASSERT_FALSE(bad_number);
  EXPECT_NE(bad_number.error().message().find("vcpus"), std::string::npos);
  EXPECT_FALSE(parse_template(text + "colour blue\n"));
  EXPECT_FALSE(parse_template(""));
  EXPECT_FALSE(parse_template("vesicle-template 1\nname x\nowner k\n")); // no id
}

TEST(TemplateName, OnlyUrlAndFileSafeNames) {
  for (const char* good : {"pandas-ml", "a", "py3.11_base", "0x"})
    EXPECT_TRUE(check_template_name(good)) << good;
  for (const char* bad : {"", "default", "Pandas", "a b", "../x", "-x", ".hidden", "a/b"}) {
    auto checked = check_template_name(bad);
    ASSERT_FALSE(checked) << bad;
    EXPECT_EQ(checked.error().kind, ErrorKind::invalid_argument);
  }
  EXPECT_FALSE(check_template_name(std::string(65, 'a')));
}

TEST(TemplateStore, LoadsCommittedTemplatesAndRemovesUnfinishedOnes) {
  testing::RetryingTempDir dir("vesicle-template-test");
  TemplateStore store(dir.path());
  auto a = sample("key-1", "a");
  a.created_at_ms = 2;
  auto b = sample("key-2", "b");
  b.created_at_ms = 1;
  for (const auto& info : {a, b}) {
    fs::create_directories(store.vm_dir(info.template_id));
    ASSERT_TRUE(store.commit(info));
  }
  // A save cut short: a directory without its `template` file.
  const auto cut = new_template_id();
  fs::create_directories(store.vm_dir(cut));
  auto loaded = store.load();
  ASSERT_EQ(loaded.size(), 2u);
  EXPECT_EQ(loaded[0].name, "b"); // oldest first
  EXPECT_EQ(loaded[1].name, "a");
  EXPECT_FALSE(fs::exists(store.template_dir(cut)));

  ASSERT_TRUE(store.remove(a.template_id));
  loaded = store.load();
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].template_id, b.template_id);
  EXPECT_FALSE(store.remove("../etc"));
}

TEST(TemplateUsage, CountsOnlyTheOwnersOwn) {
  auto mine = sample("me", "a");
  auto global = sample("admin", "g");
  auto usage = template_usage({mine, global, sample("me", "b")}, "me");
  EXPECT_EQ(usage.count, 2u);
  EXPECT_EQ(usage.memory_bytes, 2 * mine.memory_bytes);
  EXPECT_EQ(usage.disk_bytes, 2 * (mine.state_bytes + mine.disk_bytes));
  EXPECT_TRUE(template_visible(global, "me"));
  global.global = false;
  EXPECT_FALSE(template_visible(global, "me"));
}

} // namespace
} // namespace vesicle
