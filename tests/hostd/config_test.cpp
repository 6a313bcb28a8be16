#include <fstream>

#include <gtest/gtest.h>

#include "hostd/config.hpp"

using namespace vesicle::hostd;

TEST(Config, EmptyConfigurationTakesTheDocumentedDefaults) {
  auto config = load_config(std::nullopt, {});
  ASSERT_TRUE(config) << config.error().message();
  EXPECT_EQ(config->listen(), "127.0.0.1:7070");
  EXPECT_EQ(config->state_dir(), "/var/lib/vesicle");
  EXPECT_EQ(config->images_dir(), "/var/lib/vesicle/images");
  EXPECT_EQ(config->runtime_dir(), "/var/lib/vesicle/run");
  EXPECT_EQ(config->max_sandboxes(), 8u);
  EXPECT_EQ(config->default_vcpus(), 2u);
  EXPECT_EQ(config->default_memory_mib(), 1024u);
  EXPECT_EQ(config->boot_timeout_s(), 90u);
  EXPECT_EQ(config->boot_stall_timeout_s(), 20u);
  EXPECT_EQ(config->tcg_thread(), "single");
  EXPECT_EQ(config->max_json_body_bytes(), 1u << 20);
}

TEST(Config, TcgThreadIsSingleOrMulti) {
  for (const char* name : {"single", "multi"}) {
    auto named = parse_config(std::string("tcg_thread: \"") + name + "\"", false);
    ASSERT_TRUE(named);
    apply_defaults(*named);
    EXPECT_TRUE(validate(*named)) << name;
    EXPECT_EQ(named->tcg_thread(), name);
  }
  auto wrong = parse_config("tcg_thread: \"many\"", false);
  ASSERT_TRUE(wrong);
  apply_defaults(*wrong);
  auto refused = validate(*wrong);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("tcg_thread must be \"single\""), std::string::npos)
      << refused.error().message();
  EXPECT_NE(refused.error().message().find("many"), std::string::npos);
}

TEST(Config, ABootStallTimeoutOfZeroIsKeptAndMeansNever) {
  auto path = std::filesystem::temp_directory_path() /
              ("hostd-config-test-stall-" + std::to_string(::getpid()) + ".conf");
  std::ofstream(path) << "boot_stall_timeout_s: 0\n";
  auto config = load_config(path.string(), {});
  std::filesystem::remove(path);
  ASSERT_TRUE(config) << config.error().message();
  EXPECT_TRUE(config->has_boot_stall_timeout_s());
  EXPECT_EQ(config->boot_stall_timeout_s(), 0u);
}

TEST(Config, TextFormatAndJsonAreBothAccepted) {
  auto text = parse_config("listen: \"127.0.0.1:9000\"\nmax_sandboxes: 3\n", false);
  ASSERT_TRUE(text) << text.error().message();
  EXPECT_EQ(text->listen(), "127.0.0.1:9000");
  EXPECT_EQ(text->max_sandboxes(), 3u);
  auto json = parse_config(R"({"listen": "127.0.0.1:9001", "default_memory_mib": 512})", true);
  ASSERT_TRUE(json) << json.error().message();
  EXPECT_EQ(json->listen(), "127.0.0.1:9001");
  EXPECT_EQ(json->default_memory_mib(), 512u);
}

TEST(Config, MistakesAreReportedWithTheirPlace) {
  auto unknown = parse_config("listen: \"x:1\"\nmax_sandboxs: 3\n", false);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message().find("line 2"), std::string::npos)
      << unknown.error().message();
  EXPECT_NE(unknown.error().message().find("max_sandboxs"), std::string::npos);
  auto wrong_type = parse_config(R"({"max_sandboxes": "many"})", true);
  ASSERT_FALSE(wrong_type);
  EXPECT_NE(wrong_type.error().message().find("max_sandboxes"), std::string::npos)
      << wrong_type.error().message();
}

TEST(Config, CommandLineOverridesTheFile) {
  auto path = std::filesystem::temp_directory_path() /
              ("hostd-config-test-" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream out(path);
    out << R"({"listen": "127.0.0.1:9000", "state_dir": "/srv/vesicle", "max_sandboxes": 4})";
  }
  ConfigOverrides overrides;
  overrides.listen = "127.0.0.1:9100";
  overrides.state_dir = "/tmp/vesicle-state";
  auto config = load_config(path, overrides);
  std::filesystem::remove(path);
  ASSERT_TRUE(config) << config.error().message();
  EXPECT_EQ(config->listen(), "127.0.0.1:9100");
  EXPECT_EQ(config->state_dir(), "/tmp/vesicle-state");
  EXPECT_EQ(config->images_dir(), "/tmp/vesicle-state/images");
  EXPECT_EQ(config->max_sandboxes(), 4u);
}

TEST(Config, BadValuesAreRefused) {
  ConfigOverrides overrides;
  overrides.listen = "localhost";
  EXPECT_FALSE(load_config(std::nullopt, overrides));
  overrides.listen = "127.0.0.1:70000";
  EXPECT_FALSE(load_config(std::nullopt, overrides));
  overrides.listen.reset();
  overrides.state_dir = "relative/dir";
  auto relative = load_config(std::nullopt, overrides);
  ASSERT_FALSE(relative);
  EXPECT_NE(relative.error().message().find("absolute"), std::string::npos);
  EXPECT_FALSE(load_config("/nonexistent/hostd.conf", {}));
}

TEST(Config, OvercommitRatiosDefaultToOneAndStayWithinRange) {
  auto config = load_config(std::nullopt, {});
  ASSERT_TRUE(config) << config.error().message();
  EXPECT_EQ(config->admission().memory_overcommit(), 1.0);
  EXPECT_EQ(config->admission().disk_overcommit(), 1.0);
  for (const char* ratio : {"0.1", "2.5", "100"}) {
    auto parsed = parse_config(std::string("admission { disk_overcommit: ") + ratio + " }", false);
    ASSERT_TRUE(parsed) << parsed.error().message();
    apply_defaults(*parsed);
    EXPECT_TRUE(validate(*parsed)) << ratio;
  }
  for (const char* field : {"memory_overcommit", "disk_overcommit"}) {
    for (const char* ratio : {"0.05", "-1", "101"}) {
      auto parsed = parse_config(std::string("admission { ") + field + ": " + ratio + " }", false);
      ASSERT_TRUE(parsed) << parsed.error().message();
      apply_defaults(*parsed);
      auto refused = validate(*parsed);
      ASSERT_FALSE(refused) << field << " " << ratio;
      EXPECT_NE(refused.error().message().find(std::string("admission.") + field +
                                               " must be between 0.1 and 100 (1.0: no overcommit)"),
                std::string::npos)
          << refused.error().message();
    }
  }
}

TEST(Config, LogLevelIsOneOfFourNames) {
  auto config = load_config(std::nullopt, {});
  ASSERT_TRUE(config) << config.error().message();
  EXPECT_EQ(config->log_level(), "info");
  for (const char* name : {"debug", "info", "warn", "error"}) {
    auto named = parse_config(std::string("log_level: \"") + name + "\"", false);
    ASSERT_TRUE(named);
    apply_defaults(*named);
    EXPECT_TRUE(validate(*named)) << name;
  }
  ConfigOverrides overrides;
  overrides.log_level = "verbose";
  auto refused = load_config(std::nullopt, overrides);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("log_level = verbose"), std::string::npos)
      << refused.error().message();
  EXPECT_NE(refused.error().message().find("debug, info, warn or error"), std::string::npos)
      << refused.error().message();
}

TEST(Config, ListenAddressForms) {
  auto v4 = parse_listen_address("127.0.0.1:7070");
  ASSERT_TRUE(v4);
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 7070);
  auto v6 = parse_listen_address("[::1]:0");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 0);
  EXPECT_FALSE(parse_listen_address("127.0.0.1:"));
  EXPECT_FALSE(parse_listen_address(":80"));
  EXPECT_FALSE(parse_listen_address("127.0.0.1:http"));
}

TEST(Config, OneDefaultPoolUnlessConfiguredOrDisabled) {
  auto config = load_config(std::nullopt, {});
  ASSERT_TRUE(config);
  EXPECT_EQ(config->templates_dir(), "/var/lib/vesicle/templates");
  ASSERT_EQ(config->pools_size(), 1);
  const auto& pool = config->pools(0);
  EXPECT_EQ(pool.template_(), "default");
  EXPECT_EQ(pool.vcpus(), 2u);
  EXPECT_EQ(pool.memory_mib(), 1024u);
  EXPECT_EQ(pool.min_ready(), 2u);
  EXPECT_EQ(pool.max(), 8u);
  EXPECT_EQ(pool.preload_modules_size(), 2);

  auto parsed = parse_config(R"({"disable_pools": true})", true);
  ASSERT_TRUE(parsed);
  apply_defaults(*parsed);
  EXPECT_EQ(parsed->pools_size(), 0);

  parsed = parse_config("pools { memory_mib: 512 min_ready: 0 }", false);
  ASSERT_TRUE(parsed) << parsed.error().message();
  apply_defaults(*parsed);
  ASSERT_EQ(parsed->pools_size(), 1);
  EXPECT_EQ(parsed->pools(0).min_ready(), 0u) << "an explicit 0 is kept";
  EXPECT_EQ(parsed->pools(0).preload_modules_size(), 0);
  EXPECT_TRUE(validate(*parsed));
}

TEST(Config, SandboxDomainIsALowercaseDnsName) {
  auto good = parse_config("sandbox_domain: \"sbx.example-1.com\"", false);
  ASSERT_TRUE(good);
  apply_defaults(*good);
  EXPECT_TRUE(validate(*good));
  for (const char* text :
       {"sandbox_domain: \"Sbx.Example.com\"", "sandbox_domain: \"sbx.example.com:8080\"",
        "sandbox_domain: \"*.sbx.example.com\""}) {
    auto parsed = parse_config(text, false);
    ASSERT_TRUE(parsed) << text;
    apply_defaults(*parsed);
    auto checked = validate(*parsed);
    ASSERT_FALSE(checked) << text;
    EXPECT_NE(checked.error().message().find("sandbox_domain"), std::string::npos)
        << checked.error().message();
  }
}

TEST(Config, BadPoolsAreRefusedWithTheirPlace) {
  for (const char* text : {
           "pools { template: \"Big One\" }",
           "pools { min_ready: 5 max: 2 }",
           "pools { memory_mib: 64 }",
           "pools { preload_modules: \"os; import evil\" }",
           "pools { memory_mib: 512 } pools { memory_mib: 512 }",
       }) {
    auto parsed = parse_config(text, false);
    ASSERT_TRUE(parsed) << text;
    apply_defaults(*parsed);
    auto checked = validate(*parsed);
    ASSERT_FALSE(checked) << text;
    EXPECT_NE(checked.error().message().find("pools["), std::string::npos)
        << checked.error().message();
  }
}
