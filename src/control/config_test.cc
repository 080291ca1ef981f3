// Tests for the nicmuxd config file (control/config.h): every value conversion, the spec round
// trip, each error with its file and line, LoadConfig on real files, and DiffPorts.
#include "control/config.h"
#include "control/daemon.h"
#include "port/registry.h"
#include "port/vhost_user_port.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace nicmux {
namespace {

constexpr const char* kFull = R"(# a full file
[daemon]
forward = "xconnect"
workers = 2
cpus = [3, 1]
control = "/run/nicmux/test.sock"
log_level = "debug"
stats_interval = 10
mac_aging = 120
poll_us = 2000
max_busy_workers = 1
mac_table_size = 4096
metrics = "[::1]:9469"
socket_group = "nogroup"
socket_mode = "0660"
control_group = "65534"
seccomp = "log"
user = "nobody"

[[port]]
name = "vm1"
kind = "vhost-user"
socket = "/run/nicmux/vm1.sock"
client = true
queues = 2
mtu = 9000
mac_limit = 256
allowed_macs = ["02:00:00:00:00:01", "02:00:00:00:00:02"]

[[port]]
name = "vm2"
kind = "virtio-user"
socket = "/run/nicmux/vm2.sock"
server = false
packed = true

[[port]]
name = "tap0.uplink"
kind = "tap"
ifname = "nmx0"
address = "10.0.0.1/24"
up = true
trunk = [10, 20, 4094]
vlan = 10
offset = -1
empty = ""
)";

TEST(Config, FullFile) {
  auto c = ParseConfig(kFull, "nicmuxd.toml");
  ASSERT_TRUE(c) << c.error().message();
  const DaemonSettings& d = c->daemon;
  EXPECT_EQ(d.forward, "xconnect");
  EXPECT_EQ(d.workers, 2u);
  EXPECT_EQ(d.cpus, (std::vector<int>{3, 1}));  // file order, not sorted
  EXPECT_EQ(d.control, "/run/nicmux/test.sock");
  EXPECT_EQ(d.log_level, "debug");
  EXPECT_EQ(d.stats_interval_s, 10u);
  EXPECT_EQ(d.mac_aging_s, 120u);
  EXPECT_EQ(d.poll_us, 2000u);
  EXPECT_EQ(d.max_busy_workers, 1u);
  EXPECT_EQ(d.mac_table_size, 4096u);
  EXPECT_EQ(d.metrics, "[::1]:9469");
  EXPECT_EQ(d.socket_group, "nogroup");
  EXPECT_EQ(d.socket_mode, "0660");
  EXPECT_EQ(d.control_group, "65534");
  EXPECT_EQ(d.seccomp, "log");
  EXPECT_EQ(d.user, "nobody");

  ASSERT_EQ(c->ports.size(), 3u);
  const PortSpec& vm1 = c->ports[0];
  EXPECT_EQ(vm1.kind, "vhost-user");
  EXPECT_EQ(vm1.name, "vm1");
  EXPECT_EQ(
      vm1.options,
      (std::map<std::string, std::string>{
          {"socket", "/run/nicmux/vm1.sock"}, {"client", ""}, {"queues", "2"}, {"mtu", "9000"},
          {"mac_limit", "256"}, {"allowed_macs", "02:00:00:00:00:01/02:00:00:00:00:02"}}));
  const PortSpec& vm2 = c->ports[1];
  EXPECT_EQ(vm2.kind, "virtio-user");
  EXPECT_EQ(vm2.options, (std::map<std::string, std::string>{{"socket", "/run/nicmux/vm2.sock"},
                                                             {"packed", ""}}));
  EXPECT_FALSE(vm2.Has("server"));  // false: absent
  const PortSpec& tap = c->ports[2];
  EXPECT_EQ(tap.kind, "tap");
  EXPECT_EQ(tap.name, "tap0.uplink");
  EXPECT_EQ(tap.options, (std::map<std::string, std::string>{{"ifname", "nmx0"},
                                                             {"address", "10.0.0.1/24"},
                                                             {"up", ""},
                                                             {"trunk", "10/20/4094"},
                                                             {"vlan", "10"},
                                                             {"offset", "-1"},
                                                             {"empty", ""}}));

  EXPECT_EQ(SpecToString(vm1),
            "vhost-user:vm1:allowed_macs=02:00:00:00:00:01/02:00:00:00:00:02,client,mac_limit=256,"
            "mtu=9000,queues=2,socket=/run/nicmux/vm1.sock");
  EXPECT_EQ(SpecToString(tap),
            "tap:tap0.uplink:address=10.0.0.1/24,empty,ifname=nmx0,offset=-1,trunk=10/20/4094,up,"
            "vlan=10");
  for (const PortSpec& p : c->ports) {
    auto back = ParsePortSpec(SpecToString(p));
    ASSERT_TRUE(back) << back.error().message();
    EXPECT_EQ(*back, p) << SpecToString(p);
  }
}

// The switch's port options, from a spec (the command line, `nicmuxctl port add`) or a file:
// defaults, values and the exact errors.
TEST(SwitchPortOptions, MacLimitAndAllowedMacs) {
  auto cfg = [](const std::string& text) {
    auto s = ParsePortSpec(text);
    NICMUX_CHECK_MSG(s.has_value(), text.c_str());
    return SwitchPortConfigFromSpec(*s);
  };
  auto d = cfg("vhost-user:vm1:socket=/s");
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->mac_limit, 1024u);
  EXPECT_TRUE(d->allowed_macs.empty());
  auto c = cfg("vhost-user:vm1:socket=/s,mac_limit=16,allowed_macs=02:00:00:00:00:01/02:00:00:00:00:0A");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->mac_limit, 16u);
  EXPECT_EQ(c->allowed_macs, (std::vector<uint64_t>{0x020000000001, 0x02000000000a}));
  EXPECT_EQ(cfg("tap:t:mac_limit=1048576")->mac_limit, 1048576u);
  // From the file, as an array of strings: the same.
  auto file = ParseConfig(
      "[[port]]\nname = \"vm1\"\nkind = \"vhost-user\"\nmac_limit = 16\n"
      "allowed_macs = [\"02:00:00:00:00:01\", \"02:00:00:00:00:0A\"]\n",
      "nicmuxd.toml");
  ASSERT_TRUE(file) << file.error().message();
  auto fc = SwitchPortConfigFromSpec(file->ports[0]);
  ASSERT_TRUE(fc) << fc.error().message();
  EXPECT_EQ(fc->mac_limit, 16u);
  EXPECT_EQ(fc->allowed_macs, c->allowed_macs);

  auto err = [&](const std::string& text) {
    auto r = cfg(text);
    return r ? std::string("(accepted)") : r.error().message();
  };
  EXPECT_EQ(err("vhost-user:vm1:mac_limit=0"), "port vm1: mac_limit=0 is outside 1..1048576");
  EXPECT_EQ(err("vhost-user:vm1:mac_limit=1048577"), "port vm1: mac_limit=1048577 is outside 1..1048576");
  EXPECT_EQ(err("vhost-user:vm1:mac_limit=many"), "port vm1: mac_limit='many' is not a number");
  EXPECT_EQ(err("vhost-user:vm1:mac_limit=-1"), "port vm1: mac_limit='-1' is not a number");
  EXPECT_EQ(err("vhost-user:vm1:mac_limit"), "port vm1: mac_limit='' is not a number");
  EXPECT_EQ(err("vhost-user:vm1:allowed_macs=02:00:00:00:00"),
            "port vm1: allowed_macs: '02:00:00:00:00' is not a MAC address (xx:xx:xx:xx:xx:xx)");
  EXPECT_EQ(err("vhost-user:vm1:allowed_macs"),
            "port vm1: allowed_macs: '' is not a MAC address (xx:xx:xx:xx:xx:xx)");
  EXPECT_EQ(err("vhost-user:vm1:allowed_macs=ff:ff:ff:ff:ff:ff"),
            "port vm1: allowed_macs: ff:ff:ff:ff:ff:ff is a multicast or zero address, never a frame's source");
}

// A vhost-user port's offloads=on|off: on unless said, anything else named in the error.
TEST(VhostUserPortOptions, Offloads) {
  auto opts = [](const std::string& spec) -> Result<VhostUserPortOptions> {
    NICMUX_TRY_ASSIGN(s, ParsePortSpec(spec));
    return VhostUserPortOptionsFromSpec(s, 0);
  };
  EXPECT_TRUE(opts("vhost-user:vm1:socket=/s")->offloads);
  EXPECT_TRUE(opts("vhost-user:vm1:socket=/s,offloads=on")->offloads);
  EXPECT_FALSE(opts("vhost-user:vm1:socket=/s,offloads=off")->offloads);
  auto bad = opts("vhost-user:vm1:socket=/s,offloads=maybe");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(), "port vm1: offloads=maybe: expected on or off");
}

// A vhost-user port's max_memory=SIZE (the guest memory one frontend may map), from a spec or
// a file: suffixes, the default, the range and the exact errors.
// Interrupt moderation options (docs/vhost-user.md): defaults off, ranges, and a frame bound
// needs a time bound.
TEST(VhostUserPortOptions, InterruptModeration) {
  auto opts = [](const std::string& extra) {
    auto s = ParsePortSpec("vhost-user:vm1:socket=/s" + extra);
    NICMUX_CHECK_MSG(s.has_value(), extra.c_str());
    return VhostUserPortOptionsFromSpec(*s, 0);
  };
  auto d = opts("");
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->rx_moderation.usecs, 0u);
  EXPECT_EQ(d->rx_moderation.frames, 0u);
  EXPECT_EQ(d->tx_moderation.usecs, 0u);
  auto m = opts(",rx_usecs=50,rx_frames=32,tx_usecs=10000");
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->rx_moderation.usecs, 50u);
  EXPECT_EQ(m->rx_moderation.frames, 32u);
  EXPECT_EQ(m->tx_moderation.usecs, 10000u);
  EXPECT_EQ(m->tx_moderation.frames, 0u);
  auto err = [&](const std::string& extra) {
    auto o = opts(extra);
    return o ? std::string("accepted") : o.error().message();
  };
  EXPECT_EQ(err(",rx_frames=32"), "port vm1: rx_frames=32 needs rx_usecs=N too (the time bound for a lone frame)");
  EXPECT_EQ(err(",tx_frames=1"), "port vm1: tx_frames=1 needs tx_usecs=N too (the time bound for a lone frame)");
  EXPECT_NE(err(",rx_usecs=10001").find("rx_usecs"), std::string::npos);
  EXPECT_NE(err(",tx_frames=4097,tx_usecs=1").find("tx_frames"), std::string::npos);
  EXPECT_NE(err(",rx_usecs=-1").find("rx_usecs"), std::string::npos);
}

TEST(VhostUserPortOptions, MaxMemory) {
  auto opts = [](const std::string& text) {
    auto s = ParsePortSpec(text);
    NICMUX_CHECK_MSG(s.has_value(), text.c_str());
    return VhostUserPortOptionsFromSpec(*s, 0);
  };
  auto bytes = [&](const std::string& value) -> uint64_t {
    auto o = opts("vhost-user:vm1:socket=/s,max_memory=" + value);
    EXPECT_TRUE(o) << value << ": " << o.error().message();
    return o ? o->max_memory : 0;
  };
  auto d = opts("vhost-user:vm1:socket=/s");
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->max_memory, uint64_t{4} << 40);  // today's bound: nothing changes unless set
  EXPECT_EQ(d->max_memory, vhost::kMaxMemoryBytes);
  EXPECT_EQ(bytes("16G"), uint64_t{16} << 30);
  EXPECT_EQ(bytes("16g"), uint64_t{16} << 30);
  EXPECT_EQ(bytes("1M"), uint64_t{1} << 20);
  EXPECT_EQ(bytes("1024K"), uint64_t{1} << 20);
  EXPECT_EQ(bytes("1048576"), uint64_t{1} << 20);
  EXPECT_EQ(bytes("1536m"), uint64_t{1536} << 20);
  EXPECT_EQ(bytes("4T"), uint64_t{4} << 40);
  EXPECT_EQ(bytes("4096G"), uint64_t{4} << 40);
  EXPECT_EQ(bytes("4398046511104"), uint64_t{4} << 40);
  EXPECT_EQ(bytes("0016G"), uint64_t{16} << 30);
  // From the file: a string or an integer (bytes), the same.
  auto file = ParseConfig(
      "[[port]]\nname = \"vm1\"\nkind = \"vhost-user\"\nsocket = \"/s\"\nmax_memory = \"16G\"\n"
      "[[port]]\nname = \"vm2\"\nkind = \"vhost-user\"\nsocket = \"/t\"\nmax_memory = 17179869184\n"
      "[[port]]\nname = \"vm3\"\nkind = \"vhost-user\"\nsocket = \"/u\"\nmax_memory = \"12Q\"\n",
      "nicmuxd.toml");
  ASSERT_TRUE(file) << file.error().message();
  EXPECT_EQ(SpecToString(file->ports[0]), "vhost-user:vm1:max_memory=16G,socket=/s");
  EXPECT_EQ(SpecToString(file->ports[1]), "vhost-user:vm2:max_memory=17179869184,socket=/t");
  for (int i = 0; i < 2; ++i) {
    auto o = VhostUserPortOptionsFromSpec(file->ports[i], 0);
    ASSERT_TRUE(o) << o.error().message();
    EXPECT_EQ(o->max_memory, uint64_t{16} << 30);
  }
  // The file holds any string; the port's options are checked where the port is made.
  auto bad = VhostUserPortOptionsFromSpec(file->ports[2], 0);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(),
            "port vm3: max_memory=12Q: not a size (bytes, or a whole number with K, M, G or T: 1024-based, e.g. 16G)");

  auto err = [&](const std::string& value) {
    auto r = opts("vhost-user:vm1:socket=/s,max_memory" + value);
    return r ? std::string("(accepted)") : r.error().message();
  };
  const std::string not_a_size = ": not a size (bytes, or a whole number with K, M, G or T: 1024-based, e.g. 16G)";
  EXPECT_EQ(err("=12Q"), "port vm1: max_memory=12Q" + not_a_size);
  for (const char* v : {"", "G", "1.5G", "-1", "16GB", "16 G", "0x10", "16G ", "+16G", "16KM"}) {
    EXPECT_EQ(err("=" + std::string(v)), "port vm1: max_memory=" + std::string(v) + not_a_size) << v;
  }
  EXPECT_EQ(err(""), "port vm1: max_memory=" + not_a_size);  // bare key
  EXPECT_EQ(err("=0"), "port vm1: max_memory=0: outside 1M..4T");
  EXPECT_EQ(err("=1048575"), "port vm1: max_memory=1048575: outside 1M..4T");
  EXPECT_EQ(err("=1023K"), "port vm1: max_memory=1023K: outside 1M..4T");
  EXPECT_EQ(err("=4398046511105"), "port vm1: max_memory=4398046511105: outside 1M..4T");
  EXPECT_EQ(err("=5T"), "port vm1: max_memory=5T: outside 1M..4T");
  // Numbers past 2^64, alone or with their suffix, are out of range, not wrapped into it.
  EXPECT_EQ(err("=18446744073709551616"), "port vm1: max_memory=18446744073709551616: outside 1M..4T");
  EXPECT_EQ(err("=99999999999999999999999999"), "port vm1: max_memory=99999999999999999999999999: outside 1M..4T");
  EXPECT_EQ(err("=16777217T"), "port vm1: max_memory=16777217T: outside 1M..4T");
  EXPECT_EQ(err("=17592186044417M"), "port vm1: max_memory=17592186044417M: outside 1M..4T");
  // A misspelt option: the registry's check names it and lists the kind's options.
  auto other = PortRegistry::Builtin().Check(*ParsePortSpec("vhost-user:vm1:socket=/s,max_mem=1G"));
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().message(),
            "port vm1: unknown option 'max_mem' for port kind vhost-user; known: socket, client, queues, max_memory, "
            "socket_group, socket_mode, offloads, rx_usecs, rx_frames, tx_usecs, tx_frames, vlan, trunk, mtu, "
            "mac_limit, allowed_macs, queue_affinity");
  // Only vhost-user ports take it.
  auto tap = PortRegistry::Builtin().Check(*ParsePortSpec("tap:t0:max_memory=1G"));
  ASSERT_FALSE(tap);
  EXPECT_EQ(tap.error().message(),
            "port t0: unknown option 'max_memory' for port kind tap; known: ifname, queues, address, down, up, "
            "offloads, vlan, trunk, mtu, mac_limit, allowed_macs, queue_affinity");
  EXPECT_EQ(SizeToString(uint64_t{16} << 30), "16G");
  EXPECT_EQ(SizeToString(uint64_t{4} << 40), "4T");
  EXPECT_EQ(SizeToString(1536), "1536");
  EXPECT_EQ(SizeToString(uint64_t{1536} << 20), "1536M");
  EXPECT_EQ(SizeToString(0), "0");
}

TEST(Config, SpecToStringWithoutOptions) {
  PortSpec s{"vhost-user", "a", {}};
  EXPECT_EQ(SpecToString(s), "vhost-user:a");
  auto back = ParsePortSpec(SpecToString(s));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, s);
}

TEST(Config, EmptyFileIsValid) {
  for (const char* text : {"", "# only a comment\n\n", "[daemon]\n"}) {
    auto c = ParseConfig(text, "nicmuxd.toml");
    ASSERT_TRUE(c) << c.error().message();
    EXPECT_TRUE(c->ports.empty());
    EXPECT_FALSE(c->daemon.forward || c->daemon.control || c->daemon.log_level ||
                 c->daemon.workers || c->daemon.cpus || c->daemon.stats_interval_s ||
                 c->daemon.mac_aging_s || c->daemon.mac_table_size);
  }
}

TEST(Config, InlinePortArrayIsTheSameAsTables) {
  auto c = ParseConfig("port = [{ name = \"a\", kind = \"k\", q = 1 }]\n", "x.toml");
  ASSERT_TRUE(c) << c.error().message();
  ASSERT_EQ(c->ports.size(), 1u);
  EXPECT_EQ(SpecToString(c->ports[0]), "k:a:q=1");
}

TEST(Config, CpusWithoutWorkersCountAsOneWorker) {
  auto c = ParseConfig("[daemon]\ncpus = [5]\n", "x.toml");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->daemon.cpus, (std::vector<int>{5}));
  EXPECT_FALSE(c->daemon.workers);
}

struct ErrorCase {
  const char* text;
  const char* message;
};

void ExpectErrors(const std::vector<ErrorCase>& cases) {
  for (const ErrorCase& e : cases) {
    SCOPED_TRACE(e.text);
    auto c = ParseConfig(e.text, "nicmuxd.toml");
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().message(), e.message);
  }
}

// toml++ 3.3.0 aborted on these (config_fuzz found the first): refused before it parses.
TEST(Config, HeadersWithoutAKeyAreErrorsNotCrashes) {
  for (const char* text : {"[[[[port]]\nname=\"a\"\nkind=\"y\"\n", "[daemon]\n[[ [port]]\n", "x = 1\n  [ .a]\n"}) {
    auto c = ParseConfig(text, "n.toml");
    ASSERT_FALSE(c) << text;
    EXPECT_NE(c.error().message().find("bad table header"), std::string::npos) << c.error().message();
  }
  auto c = ParseConfig("[daemon]\n[[ [port]]\n", "n.toml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message().rfind("n.toml:2:", 0), 0u) << c.error().message();
}

TEST(Config, SyntaxErrorsGiveLineAndColumn) {
  auto c = ParseConfig("[daemon]\nworkers = 2\nforward = \"switch\n", "nicmuxd.toml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message().rfind("nicmuxd.toml:3:", 0), 0u) << c.error().message();
  EXPECT_NE(c.error().message().find(": parse error: "), std::string::npos) << c.error().message();

  c = ParseConfig("[[port]]\nname = \"a\"\nname = \"b\"\n", "nicmuxd.toml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message().rfind("nicmuxd.toml:3:", 0), 0u) << c.error().message();
}

TEST(Config, DaemonErrors) {
  ExpectErrors({
      {"[daemon]\nworkers = 1\nwokers = 2\n", "nicmuxd.toml:3: unknown key 'wokers' in [daemon]"},
      {"[daemon]\nworkers = 0\n", "nicmuxd.toml:2: [daemon] 'workers' must be an integer in 1..64"},
      {"[daemon]\nworkers = 65\n",
       "nicmuxd.toml:2: [daemon] 'workers' must be an integer in 1..64"},
      {"[daemon]\nworkers = \"2\"\n",
       "nicmuxd.toml:2: [daemon] 'workers' must be an integer in 1..64"},
      {"[daemon]\n\nstats_interval = 86401\n",
       "nicmuxd.toml:3: [daemon] 'stats_interval' must be an integer in 0..86400"},
      {"[daemon]\npoll_us = -1\n",
       "nicmuxd.toml:2: [daemon] 'poll_us' must be an integer in 0..1000000"},
      {"[daemon]\nmax_busy_workers = 65\n",
       "nicmuxd.toml:2: [daemon] 'max_busy_workers' must be an integer in 0..64"},
      {"[daemon]\nmax_busy_workers = true\n",
       "nicmuxd.toml:2: [daemon] 'max_busy_workers' must be an integer in 0..64"},
      {"[daemon]\nmac_aging = 0\n",
       "nicmuxd.toml:2: [daemon] 'mac_aging' must be an integer in 1..86400"},
      {"[daemon]\nmac_table_size = 15\n",
       "nicmuxd.toml:2: [daemon] 'mac_table_size' must be an integer in 16..1048576"},
      {"[daemon]\nmac_table_size = 1048577\n",
       "nicmuxd.toml:2: [daemon] 'mac_table_size' must be an integer in 16..1048576"},
      {"[daemon]\nmac_aging = 1.5\n",
       "nicmuxd.toml:2: [daemon] 'mac_aging' must be an integer in 1..86400"},
      {"[daemon]\nforward = \"bridge\"\n",
       "nicmuxd.toml:2: [daemon] 'forward' must be one of \"switch\", \"xconnect\""},
      {"[daemon]\nuser = \"root\"\n",
       "nicmuxd.toml:2: [daemon] 'user': user 'root' is root: --user names the unprivileged user to run as"},
      {"[daemon]\nuser = \"nobody:no-such-group-nmx\"\n",
       "nicmuxd.toml:2: [daemon] 'user': group 'no-such-group-nmx': no such group on this host (getent group "
       "no-such-group-nmx)"},
      {"[daemon]\nseccomp = \"yes\"\n",
       "nicmuxd.toml:2: [daemon] 'seccomp' must be one of \"on\", \"off\", \"log\""},
      {"[daemon]\nlog_level = \"verbose\"\n",
       "nicmuxd.toml:2: [daemon] 'log_level' must be one of \"debug\", \"info\", \"warning\", "
       "\"error\""},
      {"[daemon]\ncontrol = \"\"\n",
       "nicmuxd.toml:2: [daemon] 'control' must be a socket path of 1..107 bytes"},
      {"[daemon]\nworkers = 2\ncpus = [1]\n",
       "nicmuxd.toml:3: [daemon] 'cpus' has 1 entries but workers is 2"},
      {"[daemon]\ncpus = [1, 2]\n",
       "nicmuxd.toml:2: [daemon] 'cpus' has 2 entries but workers is 1 (the default)"},
      {"[daemon]\nworkers = 2\ncpus = [1, 1]\n",
       "nicmuxd.toml:3: [daemon] 'cpus' lists CPU 1 twice"},
      {"[daemon]\ncpus = [-1]\n",
       "nicmuxd.toml:2: [daemon] 'cpus' must be an array of CPU numbers (integers 0..4095)"},
      {"[daemon]\ncpus = 1\n",
       "nicmuxd.toml:2: [daemon] 'cpus' must be an array of CPU numbers (integers 0..4095)"},
      {"[daemon]\ncontrol = \"/run/a\\u0000b\"\n",
       "nicmuxd.toml:2: [daemon] 'control' must be a socket path of 1..107 bytes"},
      {"daemon = 1\n", "nicmuxd.toml:1: 'daemon' must be a table ([daemon])"},
      {"[daemon]\nsocket_group = \"libvirt-qmeu\"\n",
       "nicmuxd.toml:2: [daemon] 'socket_group': no group 'libvirt-qmeu' on this host (getent group libvirt-qmeu "
       "finds none; with libvirt the group is usually libvirt-qemu, or kvm)"},
      {"[daemon]\nsocket_mode = \"0999\"\n",
       "nicmuxd.toml:2: [daemon] 'socket_mode': socket mode '0999' is not an octal mode 0000..0777 (e.g. 0660)"},
      {"[daemon]\ncontrol_group = 7\n", "nicmuxd.toml:2: [daemon] 'control_group' must be a string"},
      {"[daemon]\nmetrics = 9469\n",
       "nicmuxd.toml:2: [daemon] 'metrics' must be a string, ADDR:PORT (\"127.0.0.1:9469\") or \"\""},
      {"[daemon]\nmetrics = \"localhost:9469\"\n",
       "nicmuxd.toml:2: [daemon] 'metrics': metrics address \"localhost:9469\": \"localhost\" is not an IPv4 "
       "address (names are not resolved)"},
  });
  // 108 bytes do not fit sockaddr_un::sun_path with its NUL.
  std::string long_path = "[daemon]\ncontrol = \"/" + std::string(107, 'x') + "\"\n";
  auto c = ParseConfig(long_path, "nicmuxd.toml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(),
            "nicmuxd.toml:2: [daemon] 'control' must be a socket path of 1..107 bytes");
}

TEST(Config, TopLevelErrors) {
  ExpectErrors({
      {"[daemon]\n\n[ports]\nname = \"a\"\n",
       "nicmuxd.toml:3: unknown table [ports] (expected [daemon], [dpdk] or [[port]])"},
      {"\n[[prot]]\nname = \"a\"\n",
       "nicmuxd.toml:2: unknown table [prot] (expected [daemon], [dpdk] or [[port]])"},
      {"workers = 2\n",
       "nicmuxd.toml:1: unknown top-level key 'workers' (expected [daemon], [dpdk] or [[port]])"},
      {"\n[port]\nname = \"a\"\n", "nicmuxd.toml:2: 'port' must be an array of tables ([[port]])"},
  });
}

TEST(Config, PortErrors) {
  ExpectErrors({
      {"[[port]]\nname = \"vm1\"\nkind = \"vhost-user\"\n\nqueues = 1.5\n",
       "nicmuxd.toml:5: port 'vm1': 'queues' must be an integer, a string or a boolean"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\nwhen = 1979-05-27\n",
       "nicmuxd.toml:4: port 'vm1': 'when' must be an integer, a string or a boolean"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\nsub = { a = 1 }\n",
       "nicmuxd.toml:4: port 'vm1': 'sub' must be an integer, a string or a boolean"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\n[port.sub]\na = 1\n",
       "nicmuxd.toml:4: port 'vm1': 'sub' must be an integer, a string or a boolean"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\ntrunk = [1,\n  \"a\"]\n",
       "nicmuxd.toml:5: port 'vm1': 'trunk' must be a non-empty array of integers or of strings"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\ntrunk = [[1], [2]]\n",
       "nicmuxd.toml:4: port 'vm1': 'trunk' must be a non-empty array of integers or of strings"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\nallowed_macs = [\"02:00:00:00:00:01\", 2]\n",
       "nicmuxd.toml:4: port 'vm1': 'allowed_macs' must be a non-empty array of integers or of strings"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\nallowed_macs = [\"02:00:00:00:00:01/02:00:00:00:00:02\"]\n",
       "nicmuxd.toml:4: port 'vm1': 'allowed_macs' strings must be non-empty, without ',', '=', '/' or NUL"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\nallowed_macs = [\"\"]\n",
       "nicmuxd.toml:4: port 'vm1': 'allowed_macs' strings must be non-empty, without ',', '=', '/' or NUL"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\ntrunk = []\n",
       "nicmuxd.toml:4: port 'vm1': 'trunk' must be a non-empty array of integers or of strings"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\naddress = \"a,b\"\n",
       "nicmuxd.toml:4: port 'vm1': 'address' may not contain ',' or NUL (ports are "
       "KIND:NAME:key=value,... specs)"},
      {"[dpdk]\neal_args = 3\n", "nicmuxd.toml:2: 'eal_args' must be a string"},
      {"[dpdk]\nargs = \"-l 0\"\n", "nicmuxd.toml:2: unknown key 'args' in [dpdk] (eal_args)"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\n\"a=b\" = 1\n",
       "nicmuxd.toml:4: port 'vm1': option key 'a=b' must be non-empty, without ',', '=' or NUL"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\n\"\" = 1\n",
       "nicmuxd.toml:4: port 'vm1': option key '' must be non-empty, without ',', '=' or NUL"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\nsocket = \"/a\\u0000b\"\n",
       "nicmuxd.toml:4: port 'vm1': 'socket' may not contain ',' or NUL (ports are "
       "KIND:NAME:key=value,... specs)"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\\u0000\"\n",
       "nicmuxd.toml:3: port 'vm1': 'kind' must be a non-empty string without ':'"},
      {"\n[[port]]\nkind = \"k\"\n", "nicmuxd.toml:2: port has no 'name'"},
      {"[[port]]\nname = 3\nkind = \"k\"\n", "nicmuxd.toml:2: port 'name' must be a string"},
      {"[[port]]\nname = \"vm 1\"\nkind = \"k\"\n",
       "nicmuxd.toml:2: port name 'vm 1' must be 1-32 characters of [A-Za-z0-9._-]"},
      {"[[port]]\nname = \"\"\nkind = \"k\"\n",
       "nicmuxd.toml:2: port name '' must be 1-32 characters of [A-Za-z0-9._-]"},
      {"[[port]]\nname = \"abcdefghijklmnopqrstuvwxyz0123456\"\nkind = \"k\"\n",
       "nicmuxd.toml:2: port name 'abcdefghijklmnopqrstuvwxyz0123456' must be 1-32 characters of "
       "[A-Za-z0-9._-]"},
      {"[[port]]\nname = \"vm1\"\nkind = \"k\"\n\n[[port]]\nname = \"vm2\"\n",
       "nicmuxd.toml:5: port 'vm2' has no 'kind'"},
      {"[[port]]\nname = \"vm1\"\nkind = \"\"\n",
       "nicmuxd.toml:3: port 'vm1': 'kind' must be a non-empty string without ':'"},
      {"[[port]]\nname = \"vm1\"\nkind = \"a:b\"\n",
       "nicmuxd.toml:3: port 'vm1': 'kind' must be a non-empty string without ':'"},
      {"[[port]]\nname = \"vm1\"\nkind = true\n",
       "nicmuxd.toml:3: port 'vm1': 'kind' must be a non-empty string without ':'"},
  });
}

TEST(Config, DuplicatePortName) {
  std::string text = "[daemon]\nworkers = 1\n\n";          // lines 1-3
  text += "[[port]]\nname = \"vm1\"\nkind = \"tap\"\n\n";  // name at line 5
  text += "[[port]]\nname = \"vm2\"\nkind = \"tap\"\n\n";
  text += "[[port]]\nkind = \"tap\"\nname = \"vm1\"\n";  // name at line 14
  auto c = ParseConfig(text, "nicmuxd.toml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(),
            "nicmuxd.toml:14: port name 'vm1' is used twice (first at line 5)");
}

// A file in a fresh temporary directory, removed with it.
class TempFile {
 public:
  TempFile() {
    char tmpl[] = "/tmp/nicmux_config_test.XXXXXX";
    NICMUX_CHECK(mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/nicmuxd.toml";
  }
  ~TempFile() {
    std::remove(path_.c_str());
    rmdir(dir_.c_str());
  }
  void Write(const std::string& text) {
    FILE* f = std::fopen(path_.c_str(), "w");
    NICMUX_CHECK(f != nullptr);
    NICMUX_CHECK(std::fwrite(text.data(), 1, text.size(), f) == text.size());
    std::fclose(f);
  }
  const std::string& path() const { return path_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, path_;
};

TEST(Config, LoadConfigReadsTheFile) {
  TempFile f;
  f.Write(kFull);
  auto c = LoadConfig(f.path());
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->ports.size(), 3u);

  f.Write("[daemon]\nwokers = 2\n");
  c = LoadConfig(f.path());
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(), f.path() + ":2: unknown key 'wokers' in [daemon]");
}

TEST(Config, LoadConfigCannotRead) {
  auto c = LoadConfig("/nonexistent/nicmuxd.toml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(),
            "cannot read /nonexistent/nicmuxd.toml: No such file or directory");
  EXPECT_EQ(c.error().sys_errno(), ENOENT);

  TempFile f;
  c = LoadConfig(f.dir());
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(), "cannot read " + f.dir() + ": Is a directory");
}

PortSpec Spec(const std::string& text) {
  auto s = ParsePortSpec(text);
  NICMUX_CHECK_MSG(s.has_value(), text.c_str());
  return *s;
}

std::vector<std::string> Names(const std::vector<PortSpec>& v) {
  std::vector<std::string> out;
  for (const PortSpec& s : v) out.push_back(s.name);
  return out;
}

TEST(ConfigDiff, AddedRemovedChangedUnchanged) {
  std::vector<PortSpec> old_ports = {
      Spec("vhost-user:same:socket=/a"), Spec("vhost-user:gone:socket=/b"),
      Spec("vhost-user:opts:socket=/c"), Spec("vhost-user:kind:socket=/d"),
      Spec("tap:gone2:ifname=t0"),
  };
  std::vector<PortSpec> new_ports = {
      Spec("tap:new:ifname=t1"),
      Spec("virtio-user:kind:socket=/d"),          // kind changed
      Spec("vhost-user:same:socket=/a"),           // moved, unchanged
      Spec("vhost-user:opts:socket=/c,queues=2"),  // option added
      Spec("vhost-user:new2:socket=/e"),
  };
  PortDiff d = DiffPorts(old_ports, new_ports);
  EXPECT_EQ(Names(d.added), (std::vector<std::string>{"new", "new2"}));
  EXPECT_EQ(Names(d.removed), (std::vector<std::string>{"gone", "gone2"}));
  EXPECT_EQ(Names(d.changed), (std::vector<std::string>{"kind", "opts"}));
  ASSERT_EQ(d.changed.size(), 2u);
  EXPECT_EQ(d.changed[0], new_ports[1]);  // the new spec
  EXPECT_EQ(d.changed[1], new_ports[3]);

  // An option's value changing, or one going away, is a change too.
  d = DiffPorts({Spec("tap:t:ifname=a,up")}, {Spec("tap:t:ifname=b,up")});
  EXPECT_EQ(Names(d.changed), (std::vector<std::string>{"t"}));
  d = DiffPorts({Spec("tap:t:ifname=a,up")}, {Spec("tap:t:ifname=a")});
  EXPECT_EQ(Names(d.changed), (std::vector<std::string>{"t"}));
}

TEST(ConfigDiff, OrderAloneIsNoChange) {
  std::vector<PortSpec> a = {Spec("tap:a:ifname=a"), Spec("tap:b:ifname=b"),
                             Spec("vhost-user:c:socket=/c,client")};
  std::vector<PortSpec> b = {a[2], a[0], a[1]};
  for (const auto& [x, y] : {std::pair{a, b}, std::pair{b, a}, std::pair{a, a}}) {
    PortDiff d = DiffPorts(x, y);
    EXPECT_TRUE(d.added.empty());
    EXPECT_TRUE(d.removed.empty());
    EXPECT_TRUE(d.changed.empty());
  }
  PortDiff d = DiffPorts({}, a);
  EXPECT_EQ(Names(d.added), (std::vector<std::string>{"a", "b", "c"}));
  d = DiffPorts(b, {});
  EXPECT_EQ(Names(d.removed), (std::vector<std::string>{"c", "a", "b"}));
}

TEST(ConfigDiff, ReloadOfTheSameFileIsNoChange) {
  auto c1 = ParseConfig(kFull, "nicmuxd.toml");
  auto c2 = ParseConfig(kFull, "nicmuxd.toml");
  ASSERT_TRUE(c1 && c2);
  PortDiff d = DiffPorts(c1->ports, c2->ports);
  EXPECT_TRUE(d.added.empty() && d.removed.empty() && d.changed.empty());
}

}  // namespace
}  // namespace nicmux

namespace nicmux {
namespace {

// [dpdk] eal_args, split at spaces; a dpdk port's devargs keeps its '=' (and ';' for commas).
TEST(Config, DpdkEalArgsAndDevargs) {
  auto c = ParseConfig(
      "[dpdk]\neal_args = \"--no-huge  -m 128\\t--no-pci\"\n"
      "[[port]]\nname = \"d0\"\nkind = \"dpdk\"\ndevargs = \"net_memif0;role=server;socket=/run/m.sock\"\n",
      "nicmuxd.toml");
  ASSERT_TRUE(c) << c.error().message();
  ASSERT_TRUE(c->dpdk_eal_args.has_value());
  EXPECT_EQ(*c->dpdk_eal_args, (std::vector<std::string>{"--no-huge", "-m", "128", "--no-pci"}));
  ASSERT_EQ(c->ports.size(), 1u);
  EXPECT_EQ(c->ports[0].options.at("devargs"), "net_memif0;role=server;socket=/run/m.sock");
  EXPECT_TRUE(PortRegistry::Builtin().Check(c->ports[0])) << "the spec the file made is a valid dpdk spec";
  auto again = ParsePortSpec(SpecToString(c->ports[0]));
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ(*again, c->ports[0]) << "round trip through the command-line syntax";
}

}  // namespace
}  // namespace nicmux
