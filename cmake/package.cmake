# The Debian package of a cluster node or gateway (docs/cluster.md), built
# by CPack from what is already built, component "node":
#   cd build && cpack -G DEB        -> vesicle_<version>_amd64.deb
# It holds /usr/bin/{hostd,vesicle-gateway,vesicle} (the CLI, on the SDK in
# /usr/share/vesicle/python), the guest images' recipes with the guest
# binaries in /usr/share/vesicle/images (images/build.sh builds the images
# on the node), and systemd units for hostd and the gateway. The other
# install() rules (headers, static libraries) are not in it.
install(TARGETS hostd vesicle-gateway RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        COMPONENT node EXCLUDE_FROM_ALL)
install(PROGRAMS packaging/bin/vesicle DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT node
        EXCLUDE_FROM_ALL)
install(DIRECTORY sdk/python/vesicle DESTINATION ${CMAKE_INSTALL_DATADIR}/vesicle/python
        COMPONENT node EXCLUDE_FROM_ALL PATTERN "__pycache__" EXCLUDE)
install(FILES packaging/systemd/vesicle-hostd.service packaging/systemd/vesicle-gateway.service
        DESTINATION lib/systemd/system COMPONENT node EXCLUDE_FROM_ALL)
file(GLOB node_image_recipes ${PROJECT_SOURCE_DIR}/images/*.sh)
install(PROGRAMS ${node_image_recipes} DESTINATION ${CMAKE_INSTALL_DATADIR}/vesicle/images
        COMPONENT node EXCLUDE_FROM_ALL)
install(FILES images/packages.txt DESTINATION ${CMAKE_INSTALL_DATADIR}/vesicle/images
        COMPONENT node EXCLUDE_FROM_ALL)
# The layout install.cmake gives the recipes' inputs.
install(TARGETS vesicle-agent vesicle-init RUNTIME
        DESTINATION ${CMAKE_INSTALL_DATADIR}/vesicle/images/guest COMPONENT node
        EXCLUDE_FROM_ALL)
install(FILES guest/repl/repl.py DESTINATION ${CMAKE_INSTALL_DATADIR}/vesicle/images/guest
        COMPONENT node EXCLUDE_FROM_ALL)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME vesicle)
set(CPACK_PACKAGE_VENDOR vesicle)
set(CPACK_PACKAGE_CONTACT "vesicle operators <root@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "self-hostable sandbox runtime: hostd, the cluster gateway and the CLI")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_COMPONENTS_ALL node)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_GROUPING ALL_COMPONENTS_IN_ONE)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
# RelWithDebInfo binaries are ~400 MiB with their debug info.
set(CPACK_STRIP_FILES ON)
# Shared libraries (CAF, protobuf, Boost, OpenSSL, libnl) from dpkg-shlibdeps;
# the rest by name: QEMU, qemu-img (a Space's or saved template's disk is
# rebased with it; only a Recommends of qemu-system-x86), the CLI's python3,
# nft and ip for the sandboxes' network, kill for the hostd unit's reload.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "qemu-system-x86, qemu-utils, python3, nftables, iproute2, procps")
# What images/build.sh runs to build the guest images on a node (debootstrap,
# mkfs.ext4 -d, strip, cpio, gzip), and openssl for the cluster secret as
# docs/cluster.md makes it. Recommends, not Depends: a gateway-only host
# needs none of them; apt installs them by default. (scripts/test-deb-fresh.sh
# installs the package on a minbase Debian 12 root, which has none of them.)
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "debootstrap, e2fsprogs, binutils, cpio, openssl")
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
include(CPack)
