#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "hostd/keys.hpp"

using namespace vesicle::hostd;

namespace {

struct TempDir {
  TempDir() {
    char pattern[] = "/tmp/hostd-keys-test-XXXXXX";
    path = ::mkdtemp(pattern);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::filesystem::path path;
};

std::string read(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

} // namespace

TEST(Keys, Sha256MatchesTheKnownVector) {
  EXPECT_EQ(to_hex(sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto parsed = digest_from_hex(to_hex(sha256("abc")));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, sha256("abc"));
  EXPECT_FALSE(digest_from_hex("abc"));
  EXPECT_FALSE(digest_from_hex(std::string(64, 'g')));
}

TEST(Keys, ConstantTimeCompareTellsEqualFromDifferent) {
  auto a = sha256("one");
  auto b = a;
  EXPECT_TRUE(constant_time_equal(a, b));
  b[31] ^= 1; // differs in the last byte only
  EXPECT_FALSE(constant_time_equal(a, b));
  b = a;
  b[0] ^= 0x80; // and in the first only
  EXPECT_FALSE(constant_time_equal(a, b));
}

TEST(Keys, KeysAreStoredHashedAndAuthenticate) {
  TempDir dir;
  auto file = dir.path / "keys";
  auto store = KeyStore::load(file);
  ASSERT_TRUE(store) << store.error().message();
  EXPECT_TRUE(store->empty());
  auto first = store->add();
  ASSERT_TRUE(first) << first.error().message();
  auto second = store->add();
  ASSERT_TRUE(second);
  EXPECT_NE(first->key, second->key);
  EXPECT_EQ(first->key.rfind("vsk_", 0), 0u);
  EXPECT_GE(first->key.size(), 4u + 64u);

  // On disk: the hashes, never the keys; readable by the owner only.
  auto text = read(file);
  EXPECT_EQ(text.find(first->key), std::string::npos);
  EXPECT_EQ(text.find(first->key.substr(4)), std::string::npos);
  EXPECT_NE(text.find(to_hex(sha256(first->key))), std::string::npos);
  struct stat info {};
  ASSERT_EQ(::stat(file.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(file.string() + ".tmp"));

  auto reloaded = KeyStore::load(file);
  ASSERT_TRUE(reloaded);
  EXPECT_EQ(reloaded->authenticate(first->key), first->id);
  EXPECT_EQ(reloaded->authenticate(second->key), second->id);
  EXPECT_FALSE(reloaded->authenticate(first->key + "x"));
  EXPECT_FALSE(reloaded->authenticate(""));
  EXPECT_FALSE(reloaded->authenticate(to_hex(sha256(first->key))))
      << "the stored hash must not work as a key";
}

TEST(Keys, ACorruptKeysFileIsAnErrorNamingTheLine) {
  TempDir dir;
  auto file = dir.path / "keys";
  {
    std::ofstream out(file);
    out << "# comment\nkey-1 " << to_hex(sha256("x")) << "\nkey-2 nothex\n";
  }
  auto store = KeyStore::load(file);
  ASSERT_FALSE(store);
  EXPECT_NE(store.error().message().find("line 3"), std::string::npos) << store.error().message();
}

TEST(Keys, AnAdminKeyKeepsItsMarkAcrossASaveAndAReload) {
  TempDir dir;
  auto file = dir.path / "keys";
  auto store = KeyStore::load(file);
  ASSERT_TRUE(store) << store.error().message();
  auto plain = store->add("pro");
  auto admin = store->add("", true);
  ASSERT_TRUE(plain && admin);
  auto reloaded = KeyStore::load(file);
  ASSERT_TRUE(reloaded) << reloaded.error().message();
  ASSERT_NE(reloaded->find(plain->id), nullptr);
  EXPECT_FALSE(reloaded->find(plain->id)->admin);
  EXPECT_EQ(reloaded->find(plain->id)->tier, "pro");
  ASSERT_NE(reloaded->find(admin->id), nullptr);
  EXPECT_TRUE(reloaded->find(admin->id)->admin);
  EXPECT_EQ(reloaded->find(admin->id)->tier, "");
}

TEST(Keys, AnUnknownWordAfterTheHashIsAnErrorNamingIt) {
  TempDir dir;
  auto file = dir.path / "keys";
  {
    std::ofstream out(file);
    out << "key-1 " << to_hex(sha256("x")) << " pro admin\nkey-2 " << to_hex(sha256("y"))
        << " root\n";
  }
  auto store = KeyStore::load(file);
  ASSERT_FALSE(store);
  EXPECT_NE(store.error().message().find("line 2"), std::string::npos) << store.error().message();
  EXPECT_NE(store.error().message().find("\"root\""), std::string::npos) << store.error().message();
}

// Issue 14: a 32-bit id could collide and merge two tenants' views.
TEST(Keys, NewKeyIdsAre128RandomBits) {
  TempDir dir;
  auto store = KeyStore::load(dir.path / "keys");
  ASSERT_TRUE(store);
  std::set<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    auto created = store->add();
    ASSERT_TRUE(created);
    ASSERT_EQ(created->id.size(), 4u + 32u) << created->id;
    EXPECT_EQ(created->id.substr(0, 4), "key-");
    EXPECT_EQ(created->id.find_first_not_of("0123456789abcdef", 4), std::string::npos);
    ids.insert(created->id);
  }
  EXPECT_EQ(ids.size(), 20u);
}

// Keys made before ids grew keep their ids: their Spaces on disk name them.
TEST(Keys, AnOldShortIdStillLoadsAndAuthenticates) {
  TempDir dir;
  {
    std::ofstream out(dir.path / "keys");
    out << "key-0123abcd " << to_hex(sha256("vsk_old")) << " pro\n";
  }
  auto store = KeyStore::load(dir.path / "keys");
  ASSERT_TRUE(store) << store.error().message();
  EXPECT_EQ(store->authenticate("vsk_old"), "key-0123abcd");
  // A new key beside it gets a long id, and the old line is kept as it was.
  auto created = store->add();
  ASSERT_TRUE(created);
  EXPECT_EQ(created->id.size(), 36u);
  auto again = KeyStore::load(dir.path / "keys");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->authenticate("vsk_old"), "key-0123abcd");
  EXPECT_EQ(again->find("key-0123abcd")->tier, "pro");
}

TEST(Keys, TwoLinesWithOneIdAreRefused) {
  TempDir dir;
  {
    std::ofstream out(dir.path / "keys");
    out << "key-1 " << to_hex(sha256("x")) << "\nkey-1 " << to_hex(sha256("y")) << "\n";
  }
  auto store = KeyStore::load(dir.path / "keys");
  ASSERT_FALSE(store);
  EXPECT_NE(store.error().message().find("line 2 repeats the key id key-1"), std::string::npos)
      << store.error().message();
}

TEST(Keys, AReloadSeesAddedAndRemovedKeysAndABadFileChangesNothing) {
  TempDir dir;
  auto running = KeyStore::load(dir.path / "keys");
  ASSERT_TRUE(running);
  auto alice = running->add();
  auto bob = running->add();
  ASSERT_TRUE(alice && bob);
  // Another process (hostd --new-key) adds carol; an operator removes bob.
  auto other = KeyStore::load(dir.path / "keys");
  ASSERT_TRUE(other);
  auto carol = other->add();
  ASSERT_TRUE(carol);
  EXPECT_FALSE(running->authenticate(carol->key));
  {
    std::string text = read(dir.path / "keys"), kept;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
      if (line.rfind(bob->id + " ", 0) != 0) kept += line + "\n";
    std::ofstream(dir.path / "keys") << kept;
  }
  auto removed = running->reload();
  ASSERT_TRUE(removed) << removed.error().message();
  EXPECT_EQ(*removed, std::vector<std::string>{bob->id});
  EXPECT_EQ(running->authenticate(carol->key), carol->id);
  EXPECT_EQ(running->authenticate(alice->key), alice->id);
  EXPECT_FALSE(running->authenticate(bob->key));
  // A retired id is still an owner (the admin listing), not a key.
  running->retire(bob->id);
  EXPECT_EQ(running->owners(), (std::vector<std::string>{alice->id, carol->id, bob->id}));

  std::ofstream(dir.path / "keys", std::ios::app) << "broken line\n";
  EXPECT_FALSE(running->reload());
  EXPECT_EQ(running->authenticate(carol->key), carol->id);
}

// hostd's and vesicle-gateway's start: a first start makes a key, a later
// one does not, --new-key always does; the text names the tier it gets.
TEST(Keys, AStartMakesTheFirstKeyAndANewKeyWhenAsked) {
  TempDir dir;
  auto state = dir.path / "state";
  auto first = open_keys_at_start(state, {}, "free");
  ASSERT_TRUE(first) << first.error().message();
  ASSERT_TRUE(first->made);
  EXPECT_EQ(first->made_text, "vesicle API key " + first->made->id +
                                  ", tier free (shown only this once; store it now):\n" +
                                  first->made->key + "\n");
  EXPECT_EQ(first->store.authenticate(first->made->key), first->made->id);
  struct stat info {};
  ASSERT_EQ(::stat(state.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0700u) << "the state directory holds the keys file";

  auto later = open_keys_at_start(state, {}, "free");
  ASSERT_TRUE(later) << later.error().message();
  EXPECT_FALSE(later->made);
  EXPECT_EQ(later->made_text, "");
  EXPECT_EQ(later->store.authenticate(first->made->key), first->made->id);

  auto asked = open_keys_at_start(state, {true, "pro", true}, "free");
  ASSERT_TRUE(asked) << asked.error().message();
  ASSERT_TRUE(asked->made);
  EXPECT_EQ(asked->made_text.rfind("vesicle admin API key " + asked->made->id + ", tier pro ", 0),
            0u)
      << asked->made_text;
  ASSERT_NE(asked->store.find(asked->made->id), nullptr);
  EXPECT_TRUE(asked->store.find(asked->made->id)->admin);
  EXPECT_EQ(asked->store.entries().size(), 2u);

  auto unknown = open_keys_at_start(state, {true, "gold", false}, "free");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message().find("unknown tier \"gold\""), std::string::npos)
      << unknown.error().message();
}
